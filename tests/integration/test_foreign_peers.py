"""titanic with peers that know none of its extensions, and titanic's own peers kept honest:
a standard 9/TSP server behind titanic's broker, a client that compares whole status frames,
brokers on different stores, and the broker's refusals told from workers' replies."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
import zmq
from standard_tsp import StandardTitanic, whole_frame_client
from titanic_support import fast_dispatcher, run_cli, running, start_broker, wait_until

from titanic.broker import Broker
from titanic.client import Client
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.standalone import Dispatcher
from titanic.errors import StoreMismatchError
from titanic.protocol.mdp import Frames
from titanic.settings import BrokerSettings
from titanic.store import RequestStatus, Store, open_store
from titanic.worker import Worker, echo_handler

SETTINGS = fast_dispatcher(request_timeout=2.0, max_attempts=50)


def worker(stack: ExitStack, endpoint: str, handler: Callable[[Frames], Frames] = echo_handler,
           service: str = "echo") -> Worker:
    running_worker = Worker(endpoint, service, handler, heartbeat_interval=0.1, liveness=5,
                            reconnect_initial=0.05)
    stack.enter_context(running(running_worker))
    return running_worker


def hosting_broker(stack: ExitStack, store: Store, broker_settings: BrokerSettings | None = None
                   ) -> str:
    """A broker with the dispatcher in it, on `store`, until `stack` closes; its endpoint."""
    broker = Broker("tcp://127.0.0.1:0", broker_settings or BrokerSettings(
        heartbeat_interval=0.1, heartbeat_liveness=5), host=HostedDispatcher(store, SETTINGS))
    endpoint = broker.bind()[0]
    stack.enter_context(running(broker))
    return endpoint


def sqlite_store(stack: ExitStack, path: Path) -> Store:
    store = open_store(f"sqlite:///{path}")
    stack.callback(store.close_store)
    return store


# -- a standard 9/TSP server --------------------------------------------------------------------

def test_titanic_client_submits_fetches_and_closes_through_a_standard_server(
        stack: ExitStack, caplog: pytest.LogCaptureFixture) -> None:
    endpoint = start_broker(stack).bound[0]
    server = StandardTitanic(endpoint).start(stack)
    worker(stack, endpoint)
    with TitanicClient(endpoint, timeout=2.0) as titanic, caplog.at_level(logging.WARNING):
        first = titanic.submit("echo", b"hello", b"world")
        second = titanic.submit("echo", b"again")
        # Stored as given, as a standard server stores it: the service first.
        assert server.requests[first] == [b"echo", b"hello", b"world"]
        assert titanic.wait(first, timeout=10).reply == [b"hello", b"world"]
        assert titanic.wait(second, timeout=10).reply == [b"again"]
        titanic.close_request(first)
        assert titanic.fetch(first).state is ReplyState.UNKNOWN
    warnings = [r for r in caplog.records if "takes no idempotency keys" in r.getMessage()]
    assert len(warnings) == 1, "said once per broker, not per submit"


def test_the_cli_submits_fetches_and_closes_through_a_standard_server(stack: ExitStack) -> None:
    endpoint = start_broker(stack).bound[0]
    server = StandardTitanic(endpoint).start(stack)
    worker(stack, endpoint)
    submitted = run_cli("submit", "echo", "hello", "-b", endpoint)
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    assert server.requests[request_id] == [b"echo", b"hello"]
    assert b"may be stored twice" in submitted.stderr
    fetched = run_cli("fetch", "--wait", "--timeout", "20", request_id, "-b", endpoint)
    assert (fetched.returncode, fetched.stdout) == (0, b"hello\n"), fetched.stderr
    closed = run_cli("close", request_id, "-b", endpoint)
    assert closed.returncode == 0, closed.stderr
    assert request_id not in server.requests


# -- a client that compares whole status frames ------------------------------------------------

def test_a_client_comparing_whole_status_frames_runs_to_completion(stack: ExitStack,
                                                                    tmp_path: Path) -> None:
    store = sqlite_store(stack, tmp_path / "titanic.db")
    endpoint = hosting_broker(stack, store)
    with TitanicClient(endpoint, timeout=2.0) as titanic:
        unserved = titanic.submit("nobody", b"x")  # pending for as long as the test runs
        assert whole_frame_client(endpoint, unserved, polls=3) == "still polling"
        closed_elsewhere = titanic.submit("nobody", b"y")
        assert whole_frame_client(endpoint, closed_elsewhere,
                                  close=lambda: titanic.close_request(closed_elsewhere)
                                  ) == "client error"
        assert whole_frame_client(endpoint, "0" * 32) == "client error"
        worker(stack, endpoint)
        done = titanic.submit("echo", b"z")
        assert titanic.wait(done, timeout=10).state is ReplyState.DONE
        assert whole_frame_client(endpoint, done) == "reply"


def test_titanic_reply_answers_the_code_alone_and_the_reason_after_it(stack: ExitStack,
                                                                        tmp_path: Path) -> None:
    store = sqlite_store(stack, tmp_path / "titanic.db")
    endpoint = hosting_broker(stack, store)
    with TitanicClient(endpoint, timeout=2.0) as titanic:
        request_id = titanic.submit("nobody", b"x")
        with Client(endpoint, timeout=2.0, retries=0) as plain:
            assert plain.request("titanic.reply", request_id.encode()) == [b"300", b"pending"]
            assert plain.request("titanic.reply", b"0" * 32) == [b"400", b"unknown"]
            assert plain.request("titanic.request") == [
                b"400", b"bad request: titanic.request needs a service name frame"]
        fetched = titanic.fetch(request_id)
        assert (fetched.state, fetched.text) == (ReplyState.PENDING, "pending")


# -- brokers on different stores ----------------------------------------------------------------

def test_a_client_whose_brokers_serve_different_stores_stops_before_storing_anything(
        stack: ExitStack, tmp_path: Path) -> None:
    stores = [sqlite_store(stack, tmp_path / "a.db"), sqlite_store(stack, tmp_path / "c.db")]
    brokers = [hosting_broker(stack, store) for store in stores]
    with (TitanicClient(brokers, timeout=2.0) as titanic,
          pytest.raises(StoreMismatchError) as caught):
        titanic.submit("echo", b"x")
    message = str(caught.value)
    assert brokers[0] in message and brokers[1] in message
    assert all(store.list() == [] for store in stores)
    cli = run_cli("submit", "echo", "x", "-b", ",".join(brokers))
    assert cli.returncode != 0 and cli.stderr.count(b"\n") == 1, cli.stderr
    assert b"different stores" in cli.stderr and b"Traceback" not in cli.stderr
    assert all(store.list() == [] for store in stores)


def test_a_client_whose_brokers_share_a_store_submits_through_either(
        stack: ExitStack, tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    brokers = [hosting_broker(stack, sqlite_store(stack, path)),
               hosting_broker(stack, sqlite_store(stack, path))]
    worker_on_both = Worker(brokers, "echo", echo_handler, heartbeat_interval=0.1, liveness=5,
                            reconnect_initial=0.05)
    stack.enter_context(running(worker_on_both))
    with TitanicClient(brokers[::-1], timeout=2.0) as titanic:
        request_id = titanic.submit("echo", b"x")
        assert titanic.wait(request_id, timeout=10).reply == [b"x"]


def test_a_hosted_broker_refuses_a_dispatcher_on_another_store(stack: ExitStack,
                                                               tmp_path: Path) -> None:
    hosted = sqlite_store(stack, tmp_path / "hosted.db")
    endpoint = hosting_broker(stack, hosted)
    other = sqlite_store(stack, tmp_path / "other.db")
    with pytest.raises(StoreMismatchError) as caught:
        Dispatcher(other, replace(SETTINGS, broker=[endpoint])).run()
    assert hosted.identity().id in str(caught.value)


# -- refusals are never replies -----------------------------------------------------------------

def slow_echo(frames: Frames) -> Frames:
    time.sleep(0.02)
    return frames


@pytest.mark.parametrize("hosted", [False, True], ids=["own dispatcher", "in the broker"])
def test_a_broker_refusal_is_retried_never_stored_as_a_reply(stack: ExitStack, tmp_path: Path,
                                                            hosted: bool) -> None:
    store = sqlite_store(stack, tmp_path / "titanic.db")
    tight = BrokerSettings(heartbeat_interval=0.1, heartbeat_liveness=5, queue_limit=2)
    broker = Broker("tcp://127.0.0.1:0", tight,
                    host=HostedDispatcher(store, SETTINGS) if hosted else None)
    endpoint = broker.bind()[0]
    stack.enter_context(running(broker))
    if not hosted:
        stack.enter_context(running(Dispatcher(store, replace(SETTINGS, broker=[endpoint]))))
    worker(stack, endpoint, slow_echo)
    with TitanicClient(endpoint, timeout=2.0) as titanic:
        sent = {titanic.submit("echo", b"%d" % n): b"%d" % n for n in range(40)}

    def finished() -> bool:
        counts = store.stats().by_status()
        return not counts.get(RequestStatus.PENDING) and not counts.get(RequestStatus.DISPATCHED)

    wait_until(finished, timeout=60, interval=0.1, message="every request finished")
    for request_id, body in sent.items():
        stored = store.get(request_id)
        assert stored is not None and stored.status is RequestStatus.DONE, stored
        assert stored.reply == (body,)
    assert broker.stats.rejected_requests > 0, "the queue limit was never reached: no proof"


# -- the guide's pipelining client ---------------------------------------------------------------

def test_ten_thousand_pipelined_requests_from_one_client_are_all_echoed(stack: ExitStack
                                                                        ) -> None:
    endpoint = start_broker(stack).bound[0]
    worker(stack, endpoint)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    client = context.socket(zmq.DEALER)
    client.linger = 0
    stack.callback(client.close)
    client.connect(endpoint)
    for _ in range(10_000):  # as the guide's mdclient2 does: all sent before any is read
        client.send_multipart([b"", b"MDPC01", b"echo", b"Hello world"])
    replies = []
    deadline = time.monotonic() + 60
    while len(replies) < 10_000 and time.monotonic() < deadline:
        if client.poll(1000):
            replies.append(client.recv_multipart()[3:])
    assert len(replies) == 10_000
    assert all(reply == [b"Hello world"] for reply in replies)
