"""The dispatcher with a real broker, real workers and a real SQLite file, in threads."""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace

import pytest
from titanic_support import fast_dispatcher, free_endpoint, running, wait_until

from titanic.broker import Broker
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.in_flight import START
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.protocol.mdp import Frames
from titanic.settings import BrokerSettings
from titanic.store import RequestStatus, Store, open_store
from titanic.worker import Worker


def fast_settings(broker: str) -> DispatcherSettings:
    return fast_dispatcher(broker=broker, request_timeout=1.0, max_attempts=3,
                           drain_timeout=1.0)


def worker(broker: str, service: str, handler) -> Worker:  # type: ignore[no-untyped-def]
    return Worker(broker, service, handler, heartbeat_interval=0.1, liveness=5,
                  reconnect_initial=0.05)


@pytest.fixture
def titanic(broker: str, stack: ExitStack) -> TitanicClient:
    client = TitanicClient(broker, timeout=2.0, retries=3)
    stack.callback(client.close)
    return client


def test_request_without_worker_waits_then_is_served(broker: str, store: Store,
                                                     titanic: TitanicClient,
                                                     stack: ExitStack) -> None:
    stack.enter_context(running(Dispatcher(store, fast_settings(broker))))
    request_id = titanic.submit("upper", b"hello", b"")
    assert titanic.fetch(request_id).state is ReplyState.PENDING
    stack.enter_context(running(worker(broker, "upper", lambda f: [x.upper() for x in f])))
    fetched = titanic.wait(request_id, timeout=10)
    assert fetched.state is ReplyState.DONE
    assert fetched.reply == [b"HELLO", b""]
    titanic.close_request(request_id)
    assert titanic.fetch(request_id).state is ReplyState.UNKNOWN


def test_many_requests_all_complete_and_run_again_only_after_a_timeout(
        broker: str, store: Store, titanic: TitanicClient, stack: ExitStack) -> None:
    seen: Counter[bytes] = Counter()
    lock = threading.Lock()

    def count(frames: Frames) -> Frames:
        with lock:
            seen[frames[0]] += 1
        return frames

    for _ in range(2):
        stack.enter_context(running(worker(broker, "echo", count)))
    dispatcher = Dispatcher(store, fast_settings(broker))
    stack.enter_context(running(dispatcher))
    ids = {titanic.submit("echo", str(n).encode()): str(n).encode() for n in range(200)}
    for request_id, body in ids.items():
        fetched = titanic.wait(request_id, timeout=20)
        assert fetched.state is ReplyState.DONE, fetched
        assert fetched.reply == [body]
    assert set(seen) == set(ids.values())
    # At least once: a request runs again only for another attempt, after one timed out or its
    # lease ran out (a loaded machine may make a reply late); on a quiet machine, never.
    for request_id, body in ids.items():
        stored = store.get(request_id)
        assert stored is not None and seen[body] <= stored.attempts
    assert sum(seen.values()) - len(ids) <= dispatcher.stats.retried + dispatcher.stats.released


def test_a_request_that_never_gets_a_reply_fails_after_max_attempts(
        broker: str, store: Store, titanic: TitanicClient, stack: ExitStack) -> None:
    calls: list[Frames] = []
    stuck = threading.Event()

    def black_hole(frames: Frames) -> Frames:
        calls.append(frames)
        stuck.wait(2.0)  # longer than request_timeout: every attempt times out
        return frames

    for _ in range(3):
        stack.enter_context(running(worker(broker, "slow", black_hole)))
    settings = replace(fast_settings(broker), request_timeout=0.3, max_attempts=2)
    stack.enter_context(running(Dispatcher(store, settings)))
    request_id = titanic.submit("slow", b"x")
    fetched = titanic.wait(request_id, timeout=15)
    stuck.set()
    assert fetched.state is ReplyState.FAILED
    assert "no reply" in fetched.text
    stored = store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.FAILED
    assert stored.attempts == 2
    assert len(calls) == 2


def test_an_undelivered_request_expires_while_the_dispatcher_goes_on_serving(
        broker: str, store: Store, titanic: TitanicClient) -> None:
    settings = replace(fast_settings(broker), pending_ttl=1.0, cleanup_interval=0.1)
    dispatcher = Dispatcher(store, settings)
    with ExitStack() as stack:
        stack.enter_context(running(dispatcher))
        request_id = titanic.submit("nobody", b"x")
        fetched = titanic.wait(request_id, timeout=15)
        assert fetched.state is ReplyState.EXPIRED and "not delivered within 1 s" in fetched.text
        assert dispatcher.stats.expired == 1
        assert len(titanic.submit("nobody", b"y")) == 32  # still acknowledging
    # The clean-up runs on a thread of its own, which ends with the dispatcher.
    assert not [thread for thread in threading.enumerate() if thread.name == "titanic-cleanup"]


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres",
                                                           marks=pytest.mark.postgres)])
def test_two_dispatchers_on_one_database_never_send_a_request_twice(
        broker: str, database: str, request: pytest.FixtureRequest, titanic: TitanicClient,
        stack: ExitStack) -> None:
    url = str(request.getfixturevalue("sqlite_url" if database == "sqlite" else "postgres_url"))
    seen: Counter[bytes] = Counter()
    lock = threading.Lock()

    def count(frames: Frames) -> Frames:
        with lock:
            seen[frames[0]] += 1
        return frames

    # Stopped before the database fixture drops the database.
    with ExitStack() as local:
        stores = [open_store(url), open_store(url)]
        for one in stores:
            local.callback(one.close_store)
        for _ in range(2):
            local.enter_context(running(worker(broker, "echo", count)))
        dispatchers = [Dispatcher(one, fast_settings(broker)) for one in stores]
        for dispatcher in dispatchers:
            local.enter_context(running(dispatcher))
        ids = [titanic.submit("echo", str(n).encode()) for n in range(150)]
        for request_id in ids:
            assert titanic.wait(request_id, timeout=20).state is ReplyState.DONE
    assert len(seen) == 150
    # A claim is exclusive: a request runs twice only when an attempt timed out or its lease ran
    # out (at least once allows that on a loaded machine), never because both dispatchers sent it.
    sent_again = sum(d.stats.retried + d.stats.released for d in dispatchers)
    assert sum(seen.values()) - len(seen) <= sent_again


def test_stop_releases_requests_in_flight(broker: str, store: Store, titanic: TitanicClient,
                                          stack: ExitStack) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow(frames: Frames) -> Frames:
        started.set()
        release.wait(5.0)
        return frames

    stack.enter_context(running(worker(broker, "slow", slow)))
    settings = replace(fast_settings(broker), request_timeout=30.0, drain_timeout=0.2)
    dispatcher = Dispatcher(store, settings)
    with running(dispatcher):
        request_id = titanic.submit("slow", b"x")
        assert started.wait(10)
    release.set()
    stored = store.get(request_id)
    assert stored is not None
    assert stored.status is RequestStatus.PENDING  # handed back, not left leased
    assert dispatcher.stats.released == 1


def test_dispatcher_on_a_broker_with_a_separate_worker_endpoint(store: Store) -> None:
    server = Broker("tcp://127.0.0.1:0", BrokerSettings(heartbeat_interval=0.1,
                                                        heartbeat_liveness=5),
                    worker_endpoints="tcp://127.0.0.1:0")
    clients = server.bind()[0]
    workers = server.worker_bound[0]
    settings = replace(fast_settings(clients), worker_broker=workers)
    with ExitStack() as stack:
        stack.enter_context(running(server))
        stack.enter_context(running(worker(workers, "echo", lambda frames: frames)))
        stack.enter_context(running(Dispatcher(store, settings)))
        with TitanicClient(clients, timeout=2.0, retries=3) as titanic:
            request_id = titanic.submit("echo", b"through both doors")
            answer = titanic.wait(request_id, timeout=20)
        assert answer.state is ReplyState.DONE
        assert answer.reply == [b"through both doors"]
        # The TSP services registered on the worker endpoint, none on the client one.
        assert server.stats.workers_on_client_endpoint == 0
        assert server.stats.clients_on_worker_endpoint == 0


def test_a_slow_service_gets_few_requests_at_once_so_none_time_out_in_the_queue(
        broker: str, store: Store, titanic: TitanicClient, stack: ExitStack) -> None:
    # One worker taking 40 ms a request, a 1 s request timeout: 32 requests forwarded at once
    # would keep the last ones 1.3 s in the broker's queue, past their timeout. The window
    # starts small and narrows as replies come back late (after a quarter of the timeout).
    def slow(frames: Frames) -> Frames:
        time.sleep(0.04)
        return frames

    stack.enter_context(running(worker(broker, "slow", slow)))
    dispatcher = Dispatcher(store, fast_settings(broker))
    stack.enter_context(running(dispatcher))
    ids = [titanic.submit("slow", str(n).encode()) for n in range(40)]
    narrowest = START
    for n, request_id in enumerate(ids):
        fetched = titanic.wait(request_id, timeout=30)
        assert fetched.state is ReplyState.DONE and fetched.reply == [str(n).encode()]
        # The window widens again as the queue drains: its narrowest is what shows the cut.
        narrowest = min(narrowest, dispatcher.forwarding().get("slow", (0, START))[1])
    assert dispatcher.stats.retried == 0 and dispatcher.stats.completed == 40
    assert dispatcher.forwarding()["slow"][0] == 0 and narrowest < START


def test_after_a_broker_restart_nothing_is_forwarded_before_the_service_has_workers_there(
        store: Store, stack: ExitStack) -> None:
    # A forward sent to the restarted broker before the service's workers register there
    # waits in its queue; were the dispatcher to die meanwhile, it would run when they come and
    # its reply would find no one: the request would run twice. So the dispatcher trusts no
    # mmi.service answer from before the restart, however fresh (presence_ttl: 60 s here).
    endpoint = free_endpoint()
    broker_settings = BrokerSettings(heartbeat_interval=0.1, heartbeat_liveness=5)
    ran: Counter[bytes] = Counter()

    def echo(frames: Frames) -> Frames:
        ran[frames[0]] += 1
        return frames

    dispatcher = Dispatcher(store, replace(fast_settings(endpoint), presence_ttl=60.0))
    titanic = TitanicClient(endpoint, timeout=1.0, retries=5)
    stack.callback(titanic.close)
    with ExitStack() as first:
        first.enter_context(running(Broker(endpoint, broker_settings)))
        stack.enter_context(running(dispatcher))
        with running(worker(endpoint, "echo", echo)):
            before = titanic.submit("echo", b"before")
            assert titanic.wait(before, timeout=10).state is ReplyState.DONE
    restarted = Broker(endpoint, broker_settings)
    stack.enter_context(running(restarted))
    after = titanic.submit("echo", b"after")  # through the restarted broker
    asked = restarted.stats.mmi_requests
    wait_until(lambda: restarted.stats.mmi_requests > asked + 1, timeout=10,
               message="the dispatcher asking the restarted broker about echo again")
    stored = store.get(after)
    assert stored is not None and stored.status is RequestStatus.PENDING
    assert restarted.service_counts().get("echo", (0, 0)) == (0, 0)  # nothing queued there
    stack.enter_context(running(worker(endpoint, "echo", echo)))
    fetched = titanic.wait(after, timeout=10)
    assert fetched.state is ReplyState.DONE and fetched.reply == [b"after"]
    assert ran == {b"before": 1, b"after": 1}
