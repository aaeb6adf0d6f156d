"""The dashboard's Flask application: one page, its data as JSON, two actions."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from flask import Flask, Response, jsonify, render_template

from titanic import __version__
from titanic.dashboard.state import DashboardState
from titanic.errors import ProtocolError, TitanicError
from titanic.protocol.tsp import parse_uuid


def _plotly_js() -> bytes:
    """plotly.js as the plotly package ships it (no CDN: the dashboard works offline)."""
    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()


def create_app(state: DashboardState, *, broker: str) -> Flask:
    """The Flask app serving `state`; `broker` is shown on the page."""
    app = Flask(__name__)
    plotly_js: list[bytes] = []  # read on first use: 4.6 MB

    @app.get("/")
    def index() -> str:
        return render_template("index.html", broker=broker, version=__version__,
                               refresh_ms=int(state.refresh * 1000))

    @app.get("/api/state")
    def snapshot() -> Response:
        return jsonify(state.snapshot())

    @app.post("/api/requests/<request_id>/retry")
    def retry(request_id: str) -> tuple[Response, int]:
        return _act(state.retry, request_id, "retried",
                    "not failed or expired")

    @app.post("/api/requests/<request_id>/close")
    def close(request_id: str) -> tuple[Response, int]:
        def close_one(checked: str) -> bool:
            state.close_request(checked)
            return True

        return _act(close_one, request_id, "closed", "")

    @app.get("/vendor/plotly.min.js")
    def plotly() -> Response:
        if not plotly_js:
            plotly_js.append(_plotly_js())
        response = Response(plotly_js[0], mimetype="text/javascript")
        response.cache_control.max_age = 86400
        return response

    return app


def _act(action: Callable[[str], bool], request_id: str, done: str,
         refused: str) -> tuple[Response, int]:
    """Run an action on one request: 200 if it did, 409 if the request was not in a state
    for it, 400 for a malformed UUID, 502 if the broker or dispatcher failed."""
    try:
        checked = parse_uuid(request_id.encode())
    except ProtocolError as exc:
        return jsonify(ok=False, error=str(exc)), 400
    try:
        acted = action(checked)
    except TitanicError as exc:
        return jsonify(ok=False, error=str(exc)), 502
    if not acted:
        return jsonify(ok=False, error=f"request {checked} is {refused}"), 409
    return jsonify(ok=True, uuid=checked, result=done), 200
