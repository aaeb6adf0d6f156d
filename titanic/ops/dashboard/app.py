"""The dashboard's Flask application: one page, its data as JSON, two actions, every request
checked by the rules of titanic.ops.dashboard.access before it is answered."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from flask import Flask, Response, jsonify, make_response, render_template, request

from titanic import __version__
from titanic.errors import ProtocolError, TitanicError
from titanic.ops.dashboard.access import TOKEN_HEADER, TOKEN_PARAMETER, Access, Asked
from titanic.ops.dashboard.state import DashboardState
from titanic.protocol.tsp import parse_uuid

#: Headers on every answer: no page elsewhere may frame this one (a framed page's buttons could
#: be clicked through a decoy), the token in an address is never sent on as a Referer, and
#: nothing is taken for another type than the one given.
_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}


def _plotly_js() -> bytes:
    """plotly.js as the plotly package ships it (no CDN: the dashboard works offline)."""
    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()


def _asked(access: Access) -> Asked:
    """The current request as the access checks see it."""
    headers = request.headers
    return Asked(method=request.method, path=request.path, host=headers.get("Host"),
                 origin=headers.get("Origin"), fetch_site=headers.get("Sec-Fetch-Site"),
                 header_token=headers.get(TOKEN_HEADER),
                 query_token=request.args.get(TOKEN_PARAMETER),
                 cookie=request.cookies.get(access.cookie_name))


def _plain(text: str, status: int) -> Response:
    return Response(text + "\n", status=status, mimetype="text/plain")


def create_app(state: DashboardState, *, broker: str, access: Access) -> Flask:
    """The Flask app serving `state` under the rules of `access`; `broker` is shown on the
    page."""
    app = Flask(__name__)
    plotly_js: list[bytes] = []  # read on first use: 4.6 MB

    @app.before_request
    def guard() -> Response | None:
        refusal = access.check(_asked(access))
        return None if refusal is None else _plain(refusal.reason, refusal.status)

    @app.after_request
    def protect(response: Response) -> Response:
        response.headers.update(_HEADERS)
        if request.path == "/" or request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"  # the page may hold the token
        return response

    @app.get("/")
    def index() -> Response:
        asked = _asked(access)
        if asked.query_token is not None and not access.is_token(asked.query_token):
            return _plain("forbidden: wrong token", 403)
        token = access.token if access.gives_token(asked) else ""
        response = make_response(render_template(
            "index.html", broker=broker, version=__version__, token=token,
            token_header=TOKEN_HEADER, refresh_ms=int(state.refresh * 1000)))
        if asked.query_token is not None:
            # The page's later loads and its data show this instead of the token.
            response.set_cookie(access.cookie_name, access.cookie_value, path="/",
                                httponly=True, samesite="Strict")
        return response

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
