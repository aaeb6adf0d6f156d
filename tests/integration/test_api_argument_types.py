"""Wrong types given to the client API are a TypeError naming the argument, in one sentence;
frames, UUIDs and an MDP request's service are refused before anything is sent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
import zmq
from titanic_support import free_endpoint, nothing_within, start_broker, wait_until

from titanic.client import Client
from titanic.client.tsp import TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.settings import DispatcherSettings
from titanic.errors import ProtocolError
from titanic.store import Store


@pytest.fixture
def silent_broker() -> Iterator[tuple[str, zmq.Socket[bytes]]]:
    """A ROUTER that never answers, to see what a client sends."""
    endpoint = free_endpoint()
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    router.bind(endpoint)
    try:
        yield endpoint, router
    finally:
        router.close(0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda c: c.submit("echo", 123), "request frame 1 is int: a frame is bytes, or str "
                                      "(sent as UTF-8)"),
    (lambda c: c.submit("echo", b"ok", None), "request frame 2 is NoneType: a frame is bytes, "
                                              "or str (sent as UTF-8)"),
    (lambda c: c.fetch(123), "request_id is int: a request UUID is a str, as submit returns it"),
    (lambda c: c.fetch(b"0" * 32), "request_id is bytes: a request UUID is a str, as submit "
                                   "returns it"),
    (lambda c: c.wait(None, 1.0), "request_id is NoneType: a request UUID is a str, as submit "
                                  "returns it"),
    (lambda c: c.close_request(7), "request_id is int: a request UUID is a str, as submit "
                                   "returns it"),
])
def test_titanic_client_refuses_wrong_types_before_sending(
        silent_broker: tuple[str, zmq.Socket[bytes]], call: Callable[[TitanicClient], object],
        message: str) -> None:
    endpoint, router = silent_broker
    with (TitanicClient(endpoint, timeout=0.5, retries=0) as client,
          pytest.raises(TypeError) as raised):
        call(client)
    assert str(raised.value) == message
    assert nothing_within(router)


def test_a_malformed_uuid_is_one_line_of_text(
        silent_broker: tuple[str, zmq.Socket[bytes]]) -> None:
    endpoint, router = silent_broker
    with (TitanicClient(endpoint, timeout=0.5, retries=0) as client,
          pytest.raises(ProtocolError) as raised):
        client.fetch("xyz\n")
    assert str(raised.value) == ("request_id 'xyz\\n' is not a request UUID (32 hex digits, or "
                                 "the 8-4-4-4-12 form)")
    assert nothing_within(router)


def test_mdp_client_refuses_a_service_of_another_type_before_sending(
        silent_broker: tuple[str, zmq.Socket[bytes]]) -> None:
    endpoint, router = silent_broker
    with Client(endpoint, timeout=0.5, retries=0) as client, pytest.raises(TypeError) as raised:
        client.request(5, b"x")  # type: ignore[arg-type]
    assert str(raised.value) == "the service is int: a service name is str or bytes"
    assert nothing_within(router)


def test_submit_with_a_service_or_key_of_another_type_is_a_type_error(
        stack: ExitStack, store: Store) -> None:
    host = HostedDispatcher(store, DispatcherSettings(presence_interval=0.05))
    broker = start_broker(stack, host=host)
    endpoint = broker.bound[0]
    client = stack.enter_context(TitanicClient(endpoint, timeout=2.0, retries=2))
    wait_until(lambda: broker.has_workers(b"titanic.request"), message="titanic serving")
    with pytest.raises(TypeError) as service:
        client.submit(5, b"x")  # type: ignore[arg-type]
    assert str(service.value) == "the service is int: a service name is str or bytes"
    with pytest.raises(TypeError) as key:
        client.submit("echo", b"x", key=5)  # type: ignore[arg-type]
    assert str(key.value) == "the key is int: an idempotency key is a str"
    assert store.list(limit=10) == []  # nothing stored
