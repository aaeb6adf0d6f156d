"""A handler that raises is reported to the dispatcher at once, not left to time out."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace

from titanic_support import fast_dispatcher, running, start_worker, wait_until

from titanic import PermanentError, TitanicClient
from titanic.client import Client
from titanic.client.tsp import ReplyState
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.protocol.failure import MARKER, split_last_error
from titanic.protocol.mdp import Frames
from titanic.store import RequestStatus, Store

#: Far longer than any wait below: a request that ends within the test was not timed out.
NEVER_S = 120.0


def settings(broker: str) -> DispatcherSettings:
    return fast_dispatcher(broker=broker, request_timeout=NEVER_S, max_attempts=3,
                           drain_timeout=1.0)


def test_raising_handler_is_retried_with_backoff_then_fails_with_its_error(
        broker: str, store: Store, stack: ExitStack) -> None:
    calls: list[Frames] = []

    def bad(frames: Frames) -> Frames:
        calls.append(frames)
        raise ValueError("bad input")

    start_worker(stack, broker, "parse", bad)
    stack.enter_context(running(Dispatcher(store, settings(broker))))
    with TitanicClient(broker, timeout=2.0, retries=3) as titanic:
        request_id = titanic.submit("parse", b"x")
        fetched = titanic.wait(request_id, timeout=30)
    assert fetched.state is ReplyState.FAILED
    assert str(fetched).startswith("failed: ValueError: bad input")
    stored = store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.FAILED
    assert stored.attempts == 3
    error, traceback = split_last_error(stored.last_error or "")
    assert error == "ValueError: bad input (after 3 attempts)"
    assert traceback.startswith("Traceback (most recent call last):")
    assert 'raise ValueError("bad input")' in traceback
    assert fetched.text == stored.last_error  # titanic.reply hands the traceback to clients
    assert len(calls) == 3


def test_permanent_error_fails_the_request_at_once(broker: str, store: Store,
                                                   stack: ExitStack) -> None:
    calls: list[Frames] = []

    def refuse(frames: Frames) -> Frames:
        calls.append(frames)
        try:
            int(frames[0])
        except ValueError as exc:
            raise PermanentError from exc
        return frames

    start_worker(stack, broker, "parse", refuse)
    stack.enter_context(running(Dispatcher(store, settings(broker))))
    with TitanicClient(broker, timeout=2.0, retries=3) as titanic:
        request_id = titanic.submit("parse", "bad input")
        fetched = titanic.wait(request_id, timeout=30)
        good = titanic.wait(titanic.submit("parse", b"12"), timeout=30)
    assert str(fetched) == "failed: ValueError: invalid literal for int() with base 10: " \
        "b'bad input'"  # one line: the traceback is in fetched.text
    assert "int(frames[0])" in split_last_error(fetched.text)[1]  # the cause's traceback
    stored = store.get(request_id)
    assert stored is not None and stored.attempts == 1
    assert len(calls) == 2
    assert good.state is ReplyState.DONE and good.reply == [b"12"]


def test_a_plain_mdp_client_reads_the_failure_and_the_worker_keeps_serving(
        broker: str, stack: ExitStack) -> None:
    def flaky(frames: Frames) -> list[str | bytes]:
        if frames == [b"boom"]:
            raise RuntimeError("no luck")
        return ["über", frames[0]]

    worker = start_worker(stack, broker, "flaky", flaky)
    with Client(broker, timeout=NEVER_S / 4, retries=0) as client:
        report = client.request("flaky", b"boom")
        assert report[:3] == [MARKER, b"retry", b"RuntimeError: no luck"]
        assert len(report) == 4 and b'raise RuntimeError("no luck")' in report[3]
        assert client.request("flaky", b"fine") == ["über".encode(), b"fine"]
    # The counters move just after the reply is sent: the client may see it first.
    wait_until(lambda: worker.requests_handled == 1, message="second request counted")
    assert worker.requests_failed == 1
    assert worker.reconnects == 0


def test_handler_returning_something_not_frames_is_reported(broker: str,
                                                            stack: ExitStack) -> None:
    start_worker(stack, broker, "odd", lambda frames: [1, 2])
    with Client(broker, timeout=NEVER_S / 4, retries=0) as client:
        reply = client.request("odd", b"x")
    assert reply[:2] == [MARKER, b"retry"]
    assert reply[2].startswith(b"TypeError: a reply frame must be bytes or str")


def test_a_reply_that_only_looks_like_a_report_is_stored_as_a_reply(
        broker: str, store: Store, stack: ExitStack) -> None:
    start_worker(stack, broker, "echo", lambda frames: frames)
    stack.enter_context(running(Dispatcher(store, replace(settings(broker), max_attempts=1))))
    with TitanicClient(broker, timeout=2.0, retries=3) as titanic:
        five = [MARKER, b"retry", b"x", b"y", b"z"]
        unknown_kind = [MARKER, b"maybe", b"x"]
        answers = [titanic.wait(titanic.submit("echo", *body), timeout=30)
                   for body in (five, unknown_kind)]
    assert [answer.reply for answer in answers] == [five, unknown_kind]
