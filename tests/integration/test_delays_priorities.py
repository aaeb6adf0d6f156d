"""Delays and priorities from outside: clients submit to a broker hosting the dispatcher, or to
a standalone dispatcher, on SQLite and PostgreSQL, and real workers record when and in which
order the requests reach them."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from titanic_support import fast_dispatcher, running, start_broker, wait_until

from titanic.client.aio import AsyncTitanicClient
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.standalone import Dispatcher
from titanic.protocol.mdp import Frames
from titanic.store import SCHEDULED, RequestStatus, Store, open_store, shown_state
from titanic.worker import Worker

DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
#: How long ahead the delayed request is submitted for.
DELAY_S = 1.5


class Recorder:
    """A worker's handler that notes each request's first frame and when it arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, float]] = []
        self._lock = threading.Lock()

    def __call__(self, frames: Frames) -> Frames:
        with self._lock:
            self.seen.append((frames[0], time.time()))
        return [b"done " + frames[0]]

    def bodies(self) -> list[bytes]:
        with self._lock:
            return [body for body, _ in self.seen]


def _store(request: pytest.FixtureRequest, stack: ExitStack, database: str) -> Store:
    store = open_store(str(request.getfixturevalue(
        "sqlite_url" if database == "sqlite" else "postgres_url")))
    stack.callback(store.close_store)
    return store


def _serve(stack: ExitStack, store: Store, hosted: bool) -> str:
    """A broker and a dispatcher (in the broker, or beside it) on `store`: the endpoint."""
    settings = fast_dispatcher()
    if hosted:
        return start_broker(stack, host=HostedDispatcher(store, settings)).bound[0]
    endpoint = start_broker(stack).bound[0]
    dispatcher = Dispatcher(store, fast_dispatcher(broker=endpoint))
    stack.enter_context(running(dispatcher))
    wait_until(lambda: dispatcher.health()[0], message="dispatcher serving")
    return endpoint


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("hosted", [True, False], ids=["hosted", "standalone"])
def test_a_delayed_request_is_stored_at_once_and_runs_only_after_its_time(
        request: pytest.FixtureRequest, database: str, hosted: bool) -> None:
    with ExitStack() as stack:
        store = _store(request, stack, database)
        endpoint = _serve(stack, store, hosted)
        recorder = Recorder()
        stack.enter_context(running(Worker(endpoint, "echo", recorder, heartbeat_interval=0.1)))
        client = stack.enter_context(TitanicClient(endpoint, timeout=2.0, retries=3))
        not_before = datetime.now(UTC) + timedelta(seconds=DELAY_S)
        later = client.submit("echo", b"later", not_before=not_before)
        now_id = client.submit("echo", b"now")
        stored = store.get(later)
        assert stored is not None and shown_state(stored, datetime.now(UTC)) == SCHEDULED
        assert client.wait(now_id, 10).state is ReplyState.DONE
        assert client.fetch(later).state is ReplyState.PENDING
        fetched = client.wait(later, 15)
        assert fetched.state is ReplyState.DONE and fetched.reply == [b"done later"]
        arrived = dict(recorder.seen)
        assert arrived[b"later"] >= not_before.timestamp()
        assert recorder.bodies() == [b"now", b"later"]


@pytest.mark.parametrize("database", DATABASES)
def test_a_backlog_runs_highest_priority_first(request: pytest.FixtureRequest,
                                               database: str) -> None:
    with ExitStack() as stack:
        store = _store(request, stack, database)
        endpoint = _serve(stack, store, hosted=True)
        client = stack.enter_context(TitanicClient(endpoint, timeout=2.0, retries=3))
        # No worker yet: everything waits, then one worker takes them in the claim's order.
        submitted = [(b"low-%d" % n, 0) for n in range(6)] + [(b"high-%d" % n, 5)
                                                                  for n in range(3)]
        submitted += [(b"mid", 2), (b"lowest", -1)]
        ids = [client.submit("echo", body, priority=priority) for body, priority in submitted]
        assert {store.get(i).status for i in ids} == {  # type: ignore[union-attr]
            RequestStatus.PENDING}
        recorder = Recorder()
        stack.enter_context(running(Worker(endpoint, "echo", recorder, heartbeat_interval=0.1)))
        wait_until(lambda: len(recorder.bodies()) == len(ids), timeout=20,
                   message="every request run")
        order = recorder.bodies()
        expected = [body for body, _ in sorted(submitted, key=lambda item: -item[1])]
        assert order == expected


def test_the_asyncio_client_schedules_prioritises_and_cancels(
        request: pytest.FixtureRequest) -> None:
    with ExitStack() as stack:
        store = _store(request, stack, "sqlite")
        endpoint = _serve(stack, store, hosted=True)

        async def flow() -> tuple[str, str, str]:
            async with AsyncTitanicClient(endpoint, timeout=2.0) as client:
                later = await client.submit("echo", b"x", not_before=timedelta(hours=1),
                                            priority=4)
                was = await client.cancel(later)
                fetched = await client.fetch(later)
                return later, was, fetched.state.value

        later, was, state = asyncio.run(flow())
        assert (was, state) == (SCHEDULED, "cancelled")
        stored = store.get(later)
        assert stored is not None and stored.priority == 4
        assert stored.status is RequestStatus.CANCELLED


@pytest.mark.parametrize("hosted", [True, False], ids=["hosted", "standalone"])
def test_a_delayed_request_wakes_its_dispatcher_between_surveys(
        request: pytest.FixtureRequest, hosted: bool) -> None:
    # Surveys 60 s apart: the request runs at its time because the dispatcher wakes for it.
    with ExitStack() as stack:
        store = _store(request, stack, "sqlite")
        settings = fast_dispatcher(presence_interval=60.0, presence_ttl=120.0)
        if hosted:
            endpoint = start_broker(stack, host=HostedDispatcher(store, settings)).bound[0]
        else:
            endpoint = start_broker(stack).bound[0]
            dispatcher = Dispatcher(store, replace(settings, broker=endpoint))
            stack.enter_context(running(dispatcher))
            wait_until(lambda: dispatcher.health()[0], message="dispatcher serving")
        recorder = Recorder()
        stack.enter_context(running(Worker(endpoint, "echo", recorder, heartbeat_interval=0.1)))
        client = stack.enter_context(TitanicClient(endpoint, timeout=2.0, retries=3))
        assert client.wait(client.submit("echo", b"now"), 10).state is ReplyState.DONE
        not_before = datetime.now(UTC) + timedelta(seconds=DELAY_S)
        later = client.submit("echo", b"later", not_before=not_before)
        assert client.wait(later, 20).state is ReplyState.DONE
        assert dict(recorder.seen)[b"later"] >= not_before.timestamp()
