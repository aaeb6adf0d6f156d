"""Several brokers: clients fail over and stay, workers and dispatchers register with each,
idempotent submits across brokers, and one store per broker network."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
import zmq
from titanic_support import (
    fast_dispatcher,
    free_endpoint,
    raw_dealer,
    running,
    start_broker,
    wait_until,
)

from titanic.client import Client, PipelinedClient
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.errors import StoreMismatchError, UnreachableError
from titanic.protocol import tsp
from titanic.store import Store, open_store
from titanic.worker import Worker, echo_handler


def echo_worker(brokers: list[str]) -> Worker:
    return Worker(brokers, "echo", echo_handler, heartbeat_interval=0.1, liveness=5,
                  reconnect_initial=0.05)


def settings(brokers: list[str]) -> DispatcherSettings:
    return fast_dispatcher(broker=brokers, request_timeout=1.0, max_attempts=5,
                           drain_timeout=1.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'titanic.db'}")
    yield store
    store.close_store()


def test_client_fails_over_to_the_next_broker_and_stays(stack: ExitStack) -> None:
    dead = free_endpoint()  # nothing listens there
    live = start_broker(stack).bound[0]
    stack.enter_context(running(echo_worker([live])))
    with Client([dead, live], timeout=0.5, retries=1) as client:
        assert client.request("echo", b"one") == [b"one"]
        assert client.broker == live
        assert client.request("echo", b"two", retries=0) == [b"two"]  # no failover needed


def test_client_with_no_live_broker_names_them_all(stack: ExitStack) -> None:
    dead = [free_endpoint(), free_endpoint()]
    with Client(",".join(dead), timeout=5, retries=1) as client, \
            pytest.raises(UnreachableError, match="nothing listens at") as caught:
        client.request("echo", b"x")  # told at once, not after two timeouts of 5 s
    assert all(endpoint in str(caught.value) for endpoint in dead)


def test_pipelined_client_moves_its_sockets_off_a_dead_broker(stack: ExitStack) -> None:
    dead = free_endpoint()
    live = start_broker(stack).bound[0]
    stack.enter_context(running(echo_worker([live])))
    with PipelinedClient([dead, live], depth=4, timeout=0.5, retries=1) as client:
        replies = client.request_many([("echo", [str(n).encode()]) for n in range(12)])
        assert replies == [[str(n).encode()] for n in range(12)]


def test_worker_serves_every_broker_and_survives_losing_one(stack: ExitStack) -> None:
    first_stack = stack.enter_context(ExitStack())
    first = start_broker(first_stack).bound[0]
    second = start_broker(stack).bound[0]
    worker = echo_worker([first, second])
    stack.enter_context(running(worker))
    for endpoint in (first, second):
        with Client(endpoint, timeout=2.0) as client:
            assert client.request("echo", endpoint.encode()) == [endpoint.encode()]
    first_stack.close()  # the first broker stops for good
    with Client(second, timeout=2.0) as client:
        assert client.request("echo", b"still") == [b"still"]
    wait_until(lambda: worker.requests_handled == 3, message="three requests counted")


def test_dispatcher_on_two_brokers_serves_and_forwards_through_either(
        stack: ExitStack, store: Store) -> None:
    brokers = [start_broker(stack).bound[0], start_broker(stack).bound[0]]
    stack.enter_context(running(echo_worker(brokers)))
    stack.enter_context(running(Dispatcher(store, settings(brokers))))
    for endpoint in brokers:
        with TitanicClient(endpoint, timeout=2.0, retries=2) as titanic:
            request_id = titanic.submit("echo", endpoint.encode())
            fetched = titanic.wait(request_id, timeout=15)
            assert fetched.state is ReplyState.DONE and fetched.reply == [endpoint.encode()]


def test_a_resent_keyed_submit_through_another_broker_is_stored_once(
        stack: ExitStack, store: Store) -> None:
    brokers = [start_broker(stack).bound[0], start_broker(stack).bound[0]]
    stack.enter_context(running(Dispatcher(store, settings(brokers))))
    body = tsp.build_request(b"nobody", [b"payload"], "order-1")
    answers = []
    for endpoint in brokers:  # the same submit, as a client resends it after a lost answer
        with Client(endpoint, timeout=2.0, retries=2) as client:
            answers.append(client.request(tsp.REQUEST_SERVICE, *body))
    assert answers[0][0] == b"200" and answers[0] == answers[1]
    assert sum(store.stats().by_status().values()) == 1
    with TitanicClient(brokers, timeout=2.0) as titanic:
        assert titanic.submit("nobody", b"other", key="order-1") == answers[0][1].decode()


def test_a_submit_whose_acknowledgement_died_with_its_broker_is_resent_and_stored_once(
        stack: ExitStack, store: Store) -> None:
    first_stack = stack.enter_context(ExitStack())
    brokers = [start_broker(first_stack).bound[0], start_broker(stack).bound[0]]
    stack.enter_context(running(Dispatcher(store, settings(brokers))))
    body = tsp.build_request(b"nobody", [b"payload"], "order-2")
    with raw_dealer(brokers[0]) as sock:  # a client that will never read its answer
        sock.send_multipart([b"", b"MDPC01", tsp.REQUEST_SERVICE, *body])
        wait_until(lambda: sum(store.stats().by_status().values()) == 1,
                   message="the request committed")
        first_stack.close()  # the broker dies between the commit and the client's receipt
    with TitanicClient(brokers, timeout=1.0, retries=2) as titanic:
        request_id = titanic.submit("nobody", b"payload", key="order-2")
        assert titanic.broker == brokers[1]
    stored = store.list()
    assert [request.id for request in stored] == [request_id]


def test_a_dispatcher_on_another_store_refuses_to_start(stack: ExitStack, store: Store,
                                                        tmp_path: Path) -> None:
    brokers = [start_broker(stack).bound[0], start_broker(stack).bound[0]]
    stack.enter_context(running(Dispatcher(store, settings(brokers))))
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    stack.callback(other.close_store)
    wait_until(lambda: _store_served(brokers[1]), message="titanic.store served")
    with pytest.raises(StoreMismatchError) as caught:
        Dispatcher(other, settings(brokers[::-1])).run()
    message = str(caught.value)
    assert store.identity().id in message and other.identity().id in message
    # A second dispatcher on the same store starts.
    stack.enter_context(running(Dispatcher(store, replace(settings(brokers),
                                                          request_connections=2))))


def _store_served(broker: str) -> bool:
    with Client(broker, timeout=1.0, retries=0, context=zmq.Context.instance()) as client:
        return client.request(b"mmi.service", tsp.STORE_SERVICE) == [b"200"]
