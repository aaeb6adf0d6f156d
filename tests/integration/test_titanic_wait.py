"""titanic.wait with real sockets: a waiting client hears of its reply when it is stored, with
the dispatcher in the broker and apart, and when another dispatcher stored it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
from titanic_support import fast_dispatcher, running, start_broker, wait_until

from titanic.client import Client
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.standalone import Dispatcher
from titanic.protocol.mdp import Frames
from titanic.store import Store, open_store
from titanic.worker import Worker

SETTINGS = fast_dispatcher(request_timeout=5.0, max_attempts=5)


class Gate:
    """A worker handler that answers only once the test opens the gate."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.took = threading.Event()

    def __call__(self, frames: Frames) -> Frames:
        self.took.set()
        self.opened.wait(30)
        return frames


def sqlite_store(stack: ExitStack, path: Path) -> Store:
    store = open_store(f"sqlite:///{path}")
    stack.callback(store.close_store)
    return store


def hosting(stack: ExitStack, store: Store) -> tuple[str, HostedDispatcher]:
    host = HostedDispatcher(store, SETTINGS)
    return start_broker(stack, host=host).bound[0], host


def worker(stack: ExitStack, endpoint: str, handler: Callable[[Frames], Frames]) -> None:
    stack.enter_context(running(Worker(endpoint, "gated", handler, heartbeat_interval=0.1,
                                       liveness=5, reconnect_initial=0.05)))


def held_count(waits: object) -> int:
    return len(waits.waits)  # type: ignore[attr-defined]


@pytest.mark.parametrize("hosted", [True, False], ids=["in the broker", "own dispatcher"])
def test_a_wait_is_held_until_the_reply_is_stored(stack: ExitStack, tmp_path: Path,
                                                   hosted: bool) -> None:
    store = sqlite_store(stack, tmp_path / "t.db")
    if hosted:
        endpoint, host = hosting(stack, store)
        waits = host._waits
    else:
        endpoint = start_broker(stack).bound[0]
        dispatcher = Dispatcher(store, replace(SETTINGS, broker=[endpoint]))
        stack.enter_context(running(dispatcher))
        waits = dispatcher._waits
    gate = Gate()
    worker(stack, endpoint, gate)
    with TitanicClient(endpoint, timeout=2.0) as client:
        request_id = client.submit("gated", b"x")
        outcome: list[object] = []
        waiting = threading.Thread(target=lambda: outcome.append(client.wait(request_id, 30)))
        waiting.start()
        assert gate.took.wait(30)
        wait_until(lambda: held_count(waits) == 1, message="the wait held by the dispatcher")
        gate.opened.set()
        waiting.join(30)
        [fetched] = outcome
        assert fetched.state is ReplyState.DONE and fetched.reply == [b"x"]  # type: ignore[attr-defined]
    assert held_count(waits) == 0


def test_a_wait_for_a_request_closed_elsewhere_is_answered_unknown(stack: ExitStack,
                                                                   tmp_path: Path) -> None:
    store = sqlite_store(stack, tmp_path / "t.db")
    endpoint, host = hosting(stack, store)
    with TitanicClient(endpoint, timeout=2.0) as client, Client(endpoint, timeout=5) as raw:
        request_id = client.submit("nobody", b"x")
        answers: list[Frames] = []
        asking = threading.Thread(target=lambda: answers.append(raw.request(
            "titanic.wait", request_id.encode(), b"8000")))
        asking.start()
        wait_until(lambda: held_count(host._waits) == 1, message="held")
        client.close_request(request_id)
        asking.join(10)
    assert answers == [[b"400", b"unknown"]]


def test_a_wait_holds_at_most_the_time_asked_and_then_says_pending(stack: ExitStack,
                                                                   tmp_path: Path) -> None:
    store = sqlite_store(stack, tmp_path / "t.db")
    endpoint, _ = hosting(stack, store)
    with TitanicClient(endpoint, timeout=2.0) as client, Client(endpoint, timeout=5) as raw:
        request_id = client.submit("nobody", b"x")
        began = time.monotonic()
        assert raw.request("titanic.wait", request_id.encode(), b"200") == [b"300", b"pending"]
        assert time.monotonic() - began >= 0.2
        assert raw.request("titanic.wait", request_id.encode(), b"soon") == [
            b"400", b"bad request: titanic.wait takes a UUID and a number of milliseconds"]


def test_a_reply_stored_by_another_dispatcher_reaches_a_held_wait(stack: ExitStack,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    holding, holder = hosting(stack, sqlite_store(stack, path))  # no worker at this broker
    serving, _ = hosting(stack, sqlite_store(stack, path))
    gate = Gate()
    worker(stack, serving, gate)
    with TitanicClient(holding, timeout=2.0) as client:
        request_id = client.submit("gated", b"x")
        outcome: list[object] = []
        waiting = threading.Thread(target=lambda: outcome.append(client.wait(request_id, 30)))
        waiting.start()
        assert gate.took.wait(30)  # the other dispatcher sent it
        wait_until(lambda: held_count(holder._waits) == 1, message="held")
        gate.opened.set()
        waiting.join(30)
    [fetched] = outcome
    assert fetched.state is ReplyState.DONE  # type: ignore[attr-defined]
