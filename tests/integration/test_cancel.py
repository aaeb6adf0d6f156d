"""Cancel from outside, on SQLite and PostgreSQL, with the dispatcher in the broker or beside
it: a waiting request is never sent, and a task in a worker's hands sees `titanic.current()
.cancelled`, stops early, and its late reply is discarded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime

import pytest
from titanic_support import fast_dispatcher, running, start_broker, wait_until

import titanic
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.settings import DispatcherStats
from titanic.dispatch.standalone import Dispatcher
from titanic.errors import UnknownRequestError
from titanic.protocol.mdp import Frames
from titanic.store import RequestStatus, Store, open_store
from titanic.tasks.clients import close_default_clients
from titanic.worker import Worker
from titanic.worker.tasks import task_handler

DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
#: The longest the cooperative task runs without being cancelled (bounds the test).
TASK_LIMIT_S = 20.0

started = threading.Event()
outcomes: list[str] = []


@titanic.task
def crunch(rows: int) -> str:
    """Work in steps, checking between them whether it was cancelled."""
    started.set()
    deadline = time.monotonic() + TASK_LIMIT_S
    while time.monotonic() < deadline:
        if titanic.current().cancelled:
            outcomes.append("stopped early")
            return "stopped"
        time.sleep(0.01)  # a step of the task's own work
    outcomes.append("ran to the end")
    return f"{rows} rows"


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, frames: Frames) -> Frames:
        self.bodies.append(frames[0])
        return [b"ok"]


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[ExitStack]:
    """Closed before the database fixtures are torn down (they are set up first)."""
    for name in request.fixturenames:
        if name == "database":
            param = request.getfixturevalue("database")
            request.getfixturevalue("sqlite_url" if param == "sqlite" else "postgres_url")
    with ExitStack() as stack:
        yield stack
    close_default_clients()
    titanic.configure()


def _serve(request: pytest.FixtureRequest, stack: ExitStack, database: str,
           hosted: bool) -> tuple[str, Store, DispatcherStats]:
    """A broker and a dispatcher on a fresh store: the endpoint, the store, its counters."""
    store = open_store(str(request.getfixturevalue(
        "sqlite_url" if database == "sqlite" else "postgres_url")))
    stack.callback(store.close_store)
    if hosted:
        host = HostedDispatcher(store, fast_dispatcher())
        return start_broker(stack, host=host).bound[0], store, host.stats
    endpoint = start_broker(stack).bound[0]
    dispatcher = Dispatcher(store, fast_dispatcher(broker=endpoint))
    stack.enter_context(running(dispatcher))
    wait_until(lambda: dispatcher.health()[0], message="dispatcher serving")
    return endpoint, store, dispatcher.stats


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("hosted", [True, False], ids=["hosted", "standalone"])
def test_a_task_in_hand_sees_its_cancel_and_its_reply_is_discarded(
        request: pytest.FixtureRequest, stack: ExitStack, database: str, hosted: bool) -> None:
    endpoint, store, stats = _serve(request, stack, database, hosted)
    titanic.configure(endpoint)  # where titanic.current() asks, as `worker run` sets it
    started.clear()
    outcomes.clear()
    stack.enter_context(running(Worker(endpoint, "crunch", task_handler(crunch),
                                       heartbeat_interval=0.1)))
    client = stack.enter_context(TitanicClient(endpoint, timeout=2.0, retries=3))
    handle = crunch.submit_with([10_000], client=client)
    assert started.wait(15), "the task never started"
    assert client.cancel(handle.id) == "dispatched"
    wait_until(lambda: outcomes, timeout=15, message="the task to stop")
    assert outcomes == ["stopped early"]
    fetched = client.fetch(handle.id)
    assert fetched.state is ReplyState.CANCELLED
    # The late reply ("stopped") reached the dispatcher and was not stored.
    wait_until(lambda: stats.discarded == 1, timeout=10, message="the late reply back")
    stored = store.get(handle.id)
    assert stored is not None and (stored.status, stored.reply) == (RequestStatus.CANCELLED,
                                                                    None)
    with pytest.raises(titanic.TaskFailed):
        handle.result(timeout=5)


@pytest.mark.parametrize("database", DATABASES)
def test_a_cancelled_waiting_request_is_never_sent(request: pytest.FixtureRequest,
                                                   stack: ExitStack, database: str) -> None:
    endpoint, store, _ = _serve(request, stack, database, hosted=True)
    client = stack.enter_context(TitanicClient(endpoint, timeout=2.0, retries=3))
    first = client.submit("echo", b"first")
    scheduled = client.submit("echo", b"scheduled", not_before=datetime(2099, 1, 1, tzinfo=UTC))
    last = client.submit("echo", b"last")
    assert client.cancel(first) == "pending"
    assert client.cancel(scheduled) == "scheduled"
    assert client.cancel(first) == "cancelled"
    recorder = Recorder()
    stack.enter_context(running(Worker(endpoint, "echo", recorder, heartbeat_interval=0.1)))
    assert client.wait(last, 15).state is ReplyState.DONE
    assert recorder.bodies == [b"last"]  # claimed in order: the first would have come before
    assert client.fetch(first).state is ReplyState.CANCELLED
    with pytest.raises(UnknownRequestError):
        client.cancel("0" * 32)
    done = client.cancel(last)
    assert done == "done" and client.fetch(last).state is ReplyState.DONE
    assert store.get(scheduled).status is RequestStatus.CANCELLED  # type: ignore[union-attr]
