"""The Titanic client's conversations without sockets: each Op answered by a scripted broker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from titanic.client.answers import ReplyState, Unreachable
from titanic.client.session import Ask, Conversation, Pause, Survey, TspSession
from titanic.errors import (
    RequestTooLargeError,
    StoreMismatchError,
    TitanicTimeoutError,
    UnreachableError,
)
from titanic.protocol.mdp import Frames

UUID = b"0123456789abcdef0123456789abcdef"
#: A broker's answer to one request: frames, None (no answer in time) or Unreachable.
Answer = Frames | Unreachable | None
Broker = Callable[[bytes, Frames], Answer]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def titanic_server(store: str = "store-a", *, request: Frames | None = None) -> Broker:
    """A broker with titanic's own server on `store` behind it."""
    def answer(service: bytes, body: Frames) -> Answer:
        if service == b"mmi.service":
            return [b"200"]
        if service == b"titanic.store":
            return [b"200", store.encode(), f"sqlite:///{store}.db".encode()]
        if service == b"titanic.request":
            return request or [b"200", UUID]
        return [b"300", b"pending"]
    return answer


def standard_server(service: bytes, body: Frames) -> Answer:
    """A broker with a standard 9/TSP server behind it: no titanic.store."""
    if service == b"mmi.service":
        return [b"200"] if body == [b"titanic.request"] else [b"404"]
    if service == b"titanic.request":
        return [b"200", UUID]
    raise AssertionError(f"a standard server was asked {service!r}")


def run(conversation: Conversation[Any], brokers: list[Broker], clock: Clock,
        log: list[tuple[int, bytes, Frames]]) -> Any:
    """Answer each Op from the scripted brokers; `log` gets every request sent."""
    result: Any = None
    while True:
        try:
            op = conversation.send(result)
        except StopIteration as done:
            return done.value
        if isinstance(op, Ask):
            log.append((op.broker, op.service, op.body))
            result = brokers[op.broker](op.service, op.body)
            if result is None:
                clock.now += op.timeout
        elif isinstance(op, Survey):
            result = {}
            for index, service, body in op.asks:
                log.append((index, service, body))
                result[index] = brokers[index](service, body)
        else:
            assert isinstance(op, Pause)
            clock.now += op.seconds
            result = None


def session(brokers: int = 1, clock: Clock | None = None) -> TspSession:
    return TspSession([f"tcp://127.0.0.1:{5555 + n}" for n in range(brokers)], timeout=2.5,
                      retries=2, clock=clock or Clock())


def test_a_submit_to_titanic_asks_once_what_serves_and_sends_the_keyed_form() -> None:
    clock, log = Clock(), []
    tsp = session(clock=clock)
    assert run(tsp.submit(b"echo", [b"hi"], "k1"), [titanic_server()], clock, log) == UUID.decode()
    assert [service for _, service, _ in log] == [b"mmi.service", b"titanic.store",
                                                  b"titanic.request"]
    assert log[-1][2] == [b"", b"k1", b"echo", b"hi"]
    log.clear()
    run(tsp.submit(b"echo", [b"again"], None), [titanic_server()], clock, log)
    assert [service for _, service, _ in log] == [b"titanic.request"]  # known now
    assert log[0][2][0] == b"" and len(log[0][2][1]) == 32  # a random key


def test_a_standard_server_gets_the_plain_form_and_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    clock, log = Clock(), []
    tsp = session(clock=clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            run(tsp.submit(b"echo", [b"hi"], "k1"), [standard_server], clock, log)
    assert [body for _, service, body in log if service == b"titanic.request"] == [
        [b"echo", b"hi"]] * 3
    assert sum("takes no idempotency keys" in r.getMessage() for r in caplog.records) == 1


def test_every_request_carries_a_body_frame() -> None:
    # The guide's broker asserts that every client request has one after the service name.
    clock, log = Clock(), []
    tsp = session(brokers=2, clock=clock)
    run(tsp.submit(b"echo", [b"hi"], None), [titanic_server(), titanic_server()], clock, log)
    run(tsp.fetch(UUID), [titanic_server(), titanic_server()], clock, log)
    assert log and all(body for _, _, body in log)


def test_brokers_on_different_stores_stop_a_submit_before_it_is_sent() -> None:
    clock, log = Clock(), []
    tsp = session(brokers=2, clock=clock)
    with pytest.raises(StoreMismatchError, match="serve different stores") as raised:
        run(tsp.submit(b"echo", [b"hi"], None),
            [titanic_server("store-a"), titanic_server("store-c")], clock, log)
    assert "5555" in str(raised.value) and "5556" in str(raised.value)
    assert all(service != b"titanic.request" for _, service, _ in log)


def test_a_broker_not_surveyed_is_asked_before_the_first_submit_sent_there() -> None:
    clock, log = Clock(), []
    tsp = session(brokers=2, clock=clock)
    first_up = True

    def first(service: bytes, body: Frames) -> Answer:
        return titanic_server("store-a")(service, body) if first_up else None

    def second(service: bytes, body: Frames) -> Answer:
        return titanic_server("store-c")(service, body) if not first_up else None

    assert run(tsp.submit(b"echo", [b"1"], None), [first, second], clock, log) == UUID.decode()
    first_up = False  # the client fails over to the second, which it must ask first
    log.clear()
    with pytest.raises(StoreMismatchError):
        run(tsp.submit(b"echo", [b"2"], None), [first, second], clock, log)
    assert [(index, service) for index, service, _ in log
            if service == b"titanic.request"] == [(0, b"titanic.request")]  # not to the second


def test_no_broker_reachable_is_told_without_waiting_or_probing() -> None:
    clock, log = Clock(), []
    tsp = session(brokers=2, clock=clock)
    nothing: Broker = lambda service, body: Unreachable("nothing listens")  # noqa: E731
    with pytest.raises(UnreachableError, match="nothing listens"):
        run(tsp.fetch(UUID), [nothing, nothing], clock, log)
    assert clock.now == 0.0
    assert all(service == b"titanic.reply" for _, service, _ in log)


def test_a_timeout_says_which_piece_is_down() -> None:
    clock, log = Clock(), []
    tsp = session(clock=clock)

    def no_dispatcher(service: bytes, body: Frames) -> Answer:
        return [b"404"] if service == b"mmi.service" else None

    with pytest.raises(TitanicTimeoutError, match=r"no worker serves 'titanic\.reply'"):
        run(tsp.fetch(UUID), [no_dispatcher], clock, log)


def test_a_submit_waits_for_a_server_to_appear_within_its_timeout() -> None:
    clock, log = Clock(), []
    tsp = session(clock=clock)
    appears_at = 0.35

    def starting(service: bytes, body: Frames) -> Answer:
        if clock.now < appears_at and service == b"mmi.service":
            return [b"404"]
        return titanic_server()(service, body)

    assert run(tsp.submit(b"echo", [b"hi"], None), [starting], clock, log) == UUID.decode()
    assert appears_at <= clock.now < appears_at + 0.2  # asked again every 0.1 s


def test_wait_polls_until_the_reply_is_there() -> None:
    clock, log = Clock(), []
    tsp = session(clock=clock)
    polls = iter([[b"300", b"pending"], [b"300", b"pending"], [b"200", b"done"]])
    fetched = run(tsp.wait(UUID, 10.0), [lambda service, body: next(polls)], clock, log)
    assert (fetched.state, fetched.reply) == (ReplyState.DONE, [b"done"])
    assert len(log) == 3


def test_a_body_over_the_servers_limit_is_refused_before_it_is_sent() -> None:
    clock, log = Clock(), []
    tsp = session(clock=clock)

    def small(service: bytes, body: Frames) -> Answer:
        if service == b"titanic.store":
            return [b"200", b"store-a", b"sqlite:///a.db", b"1000"]
        return titanic_server()(service, body)

    with pytest.raises(RequestTooLargeError, match="1,001 bytes, over the 1,000 bytes"):
        run(tsp.submit(b"echo", [b"x" * 1001], None), [small], clock, log)
    assert all(service != b"titanic.request" for _, service, _ in log)
    assert run(tsp.submit(b"echo", [b"x" * 1000], None), [small], clock, log) == UUID.decode()
