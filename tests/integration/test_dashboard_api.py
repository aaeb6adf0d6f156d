"""The dashboard's JSON API (Flask's test client) against a running broker and dispatcher."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from titanic_support import FAST_CONNECTION, free_endpoint, running, wait_until

pytest.importorskip("flask")

from titanic.broker import Broker  # noqa: E402
from titanic.dashboard import DashboardState, create_app  # noqa: E402
from titanic.dispatcher import Dispatcher, DispatcherSettings  # noqa: E402
from titanic.manage_client import ManagementClient  # noqa: E402
from titanic.settings import BrokerSettings  # noqa: E402
from titanic.store import RequestStatus, Store  # noqa: E402
from titanic.tsp_client import TitanicClient  # noqa: E402


def state_for(broker: str, timeout: float = 2.0, retries: int = 2) -> DashboardState:
    return DashboardState(lambda: (ManagementClient(broker, timeout=timeout, retries=retries),
                                   TitanicClient(broker, timeout=timeout, retries=retries)))


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
    app = create_app(state, broker=broker).test_client()
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
    app = create_app(state, broker="nowhere").test_client()
    try:
        state.update()
        shown = app.get("/api/state").get_json()
        assert shown["view"] is None and "nothing listens at" in shown["error"]
        answer = app.post(f"/api/requests/{'0' * 32}/retry")
        assert answer.status_code == 502
    finally:
        state.close()
