"""The dashboard's JSON API against a running broker and dispatcher: through Flask's test
client, and served on a real port and read over HTTP."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from titanic_support import FAST_CONNECTION, free_endpoint, running, start_broker, wait_until

pytest.importorskip("flask")

from flask import Flask

from titanic import PermanentError
from titanic.broker import Broker
from titanic.client.manage import ManagementClient
from titanic.client.tsp import TitanicClient
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.ops._http import QuietHandler, ThreadingServer
from titanic.ops.dashboard import Access, DashboardState, allowed_hosts, create_app
from titanic.ops.dashboard.access import TOKEN_HEADER
from titanic.protocol.mdp import Frames
from titanic.settings import BrokerSettings
from titanic.store import RequestStatus, Store
from titanic.worker import Worker

TOKEN = "a-test-token-0123456789"
#: The Host header Flask's test client sends.
TEST_HOST = "localhost"


def state_for(broker: str, timeout: float = 2.0, retries: int = 2) -> DashboardState:
    return DashboardState(lambda: (ManagementClient(broker, timeout=timeout, retries=retries),
                                   TitanicClient(broker, timeout=timeout, retries=retries)))


def loopback_access(port: int = 80) -> Access:
    """A dashboard bound to 127.0.0.1:port, as `titanic dashboard` makes it."""
    return Access(allowed_hosts("127.0.0.1", port), TOKEN, port, reading_needs_token=False)


def page_client(state: DashboardState, broker: str) -> Any:
    """Flask's test client for a loopback dashboard, sending the token and a same-origin
    Origin with every request, as the page does."""
    client = create_app(state, broker=broker, access=loopback_access()).test_client()
    client.environ_base.update({"HTTP_X_TITANIC_TOKEN": TOKEN,
                                "HTTP_ORIGIN": f"http://{TEST_HOST}"})
    return client


@contextmanager
def served(make_app: Any) -> Iterator[int]:
    """`make_app(port)`'s app served on a real loopback port in a thread; the port."""
    server = ThreadingServer(("127.0.0.1", 0), QuietHandler)
    app: Flask = make_app(server.server_port)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@pytest.fixture
def broker(sqlite_store: Store) -> Iterator[str]:
    server = Broker("tcp://127.0.0.1:0", BrokerSettings(heartbeat_interval=0.1,
                                                        heartbeat_liveness=5))
    endpoint = server.bind()[0]
    settings = DispatcherSettings(broker=endpoint, connection=FAST_CONNECTION)
    dispatcher = Dispatcher(sqlite_store, settings)
    with running(server), running(dispatcher):
        wait_until(lambda: dispatcher.health()[0], message="dispatcher serving")
        yield endpoint


def test_actions_answer_by_what_happened_to_the_request(broker: str,
                                                        sqlite_store: Store) -> None:
    pending = sqlite_store.submit("resize", [b"x"])
    failed = sqlite_store.submit("resize", [b"y"])
    sqlite_store.fail(failed, "ValueError: bad input")
    state = state_for(broker)
    app = page_client(state, broker)
    try:
        state.update()
        shown = app.get("/api/state").get_json()
        assert shown["error"] is None
        assert [r["uuid"] for r in shown["failed"]] == [failed]
        assert shown["history"][-1]["services"]["resize"]["pending"] == 1
        assert app.post("/api/requests/not-a-uuid/retry").status_code == 400
        refused = app.post(f"/api/requests/{pending}/retry")
        assert refused.status_code == 409 and "not failed or expired" in refused.get_json()["error"]
        assert app.post(f"/api/requests/{failed}/retry").get_json()["ok"]
        assert sqlite_store.get(failed).status is RequestStatus.PENDING  # type: ignore[union-attr]
        assert app.post(f"/api/requests/{pending}/close").status_code == 200
        assert sqlite_store.get(pending) is None
        page = app.get("/")
        assert page.status_code == 200 and b"/vendor/plotly.min.js" in page.data
        script = app.get("/vendor/plotly.min.js")
        assert script.status_code == 200 and b"plotly" in script.data[:2000].lower()
    finally:
        state.close()


def test_a_broker_that_does_not_answer_is_shown_not_raised() -> None:
    state = state_for(free_endpoint(), timeout=0.2, retries=0)
    app = page_client(state, "nowhere")
    try:
        state.update()
        shown = app.get("/api/state").get_json()
        assert shown["view"] is None and "nothing listens at" in shown["error"]
        answer = app.post(f"/api/requests/{'0' * 32}/retry")
        assert answer.status_code == 502
    finally:
        state.close()


def test_requests_failed_by_failure_reports_show_their_attempts(
        sqlite_store: Store) -> None:
    def refuse(frames: Frames) -> Frames:
        if frames[0] == b"never":
            raise PermanentError("no such address")
        raise ValueError("bad address")

    with ExitStack() as stack:
        broker = start_broker(stack).bound[0]
        settings = DispatcherSettings(broker=broker, connection=FAST_CONNECTION, max_attempts=3,
                                      backoff=0.05, backoff_max=0.2, request_timeout=120)
        stack.enter_context(running(Dispatcher(sqlite_store, settings)))
        stack.enter_context(running(Worker(broker, "mail", refuse, heartbeat_interval=0.1)))
        titanic = stack.enter_context(TitanicClient(broker, timeout=2.0, retries=3))
        retried, permanent = titanic.submit("mail", b"to"), titanic.submit("mail", b"never")
        for request_id in (retried, permanent):
            assert str(titanic.wait(request_id, 30)).startswith("failed:")
        state = state_for(broker)
        stack.callback(state.close)
        state.update()
        port = stack.enter_context(served(
            lambda port: create_app(state, broker=broker, access=loopback_access(port))))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=10) as answer:
            shown = {row["uuid"]: row for row in json.load(answer)["failed"]}
    assert shown[retried]["attempts"] == 3
    assert shown[retried]["last_error"] == "ValueError: bad address (after 3 attempts)"
    assert shown[permanent]["attempts"] == 1
    assert shown[permanent]["last_error"] == "PermanentError: no such address"


def test_actions_need_the_token_and_their_own_origin(broker: str, sqlite_store: Store) -> None:
    pending = sqlite_store.submit("resize", [b"x"])
    state = state_for(broker)
    app = create_app(state, broker=broker, access=loopback_access()).test_client()
    close = f"/api/requests/{pending}/close"
    try:
        refused = app.post(close, headers={"Origin": "http://localhost"})
        assert refused.status_code == 403 and TOKEN_HEADER.encode() in refused.data
        refused = app.post(close, headers={TOKEN_HEADER: TOKEN, "Origin": "null"})
        assert refused.status_code == 403 and b"another origin" in refused.data
        refused = app.post(close, headers={TOKEN_HEADER: TOKEN, "Host": "127.0.0.2"})
        assert refused.status_code == 421
        assert sqlite_store.get(pending) is not None
        # Without an Origin (not a browser: curl, a script) the token is enough.
        assert app.post(close, headers={TOKEN_HEADER: TOKEN}).status_code == 200
        assert sqlite_store.get(pending) is None
    finally:
        state.close()
