"""A broker that hosts the dispatcher (`titanic broker --titanic`), with real sockets, real
workers and real databases, in threads."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace

import pytest
from titanic_support import run_cli, start_broker, start_worker, wait_until

from titanic.broker import Broker
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.settings import DispatcherSettings
from titanic.ops.metrics import serve_broker_metrics
from titanic.protocol.mdp import Frames
from titanic.store import RequestStatus, Store, open_store

SETTINGS = DispatcherSettings(request_timeout=0.5, max_attempts=5, backoff=0.05,
                              backoff_max=0.2, lease_margin=0.5, presence_interval=0.05,
                              presence_ttl=0.5, release_interval=0.1, drain_timeout=0.5)
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def database_url(request: pytest.FixtureRequest, database: str) -> str:
    return str(request.getfixturevalue("sqlite_url" if database == "sqlite" else "postgres_url"))


def hosting_broker(stack: ExitStack, store: Store,
                   settings: DispatcherSettings = SETTINGS) -> tuple[str, Broker,
                                                                     HostedDispatcher]:
    """A broker hosting a dispatcher on `store`, running until `stack` closes."""
    host = HostedDispatcher(store, settings)
    broker = start_broker(stack, host=host)
    return broker.bound[0], broker, host


def client(stack: ExitStack, endpoint: str | list[str]) -> TitanicClient:
    titanic = TitanicClient(endpoint, timeout=2.0, retries=3)
    stack.callback(titanic.close)
    return titanic


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    return database_url(request, request.param)


@pytest.fixture
def hosted_store(store_url: str, stack: ExitStack) -> Store:
    store = open_store(store_url)
    stack.callback(store.close_store)
    return store


@pytest.mark.parametrize("store_url", DATABASES, indirect=True)
def test_every_request_is_stored_forwarded_answered_and_closed(hosted_store: Store,
                                                               stack: ExitStack) -> None:
    endpoint, _, host = hosting_broker(stack, hosted_store)
    seen: Counter[bytes] = Counter()
    lock = threading.Lock()

    def count(frames: Frames) -> Frames:
        with lock:
            seen[frames[0]] += 1
        return [frame.upper() for frame in frames]

    for _ in range(2):
        start_worker(stack, endpoint, "echo", count)
    titanic = client(stack, endpoint)
    ids = {titanic.submit("echo", b"n%d" % n): b"N%d" % n for n in range(300)}
    for request_id, body in ids.items():
        fetched = titanic.wait(request_id, timeout=20)
        assert fetched.state is ReplyState.DONE, fetched
        assert fetched.reply == [body]
    assert all(seen[body.lower()] == 1 for body in ids.values())  # none timed out: once each
    for request_id in ids:
        titanic.close_request(request_id)
    assert titanic.fetch(next(iter(ids))).state is ReplyState.UNKNOWN
    assert host.stats.completed == 300 and host.stats.dispatched == 300


def test_a_request_waits_until_a_worker_registers(store: Store, stack: ExitStack) -> None:
    endpoint, _, _ = hosting_broker(stack, store)
    titanic = client(stack, endpoint)
    request_id = titanic.submit("later", b"x")
    assert titanic.fetch(request_id).state is ReplyState.PENDING
    start_worker(stack, endpoint, "later", lambda frames: [b"done", *frames])
    fetched = titanic.wait(request_id, timeout=10)
    assert fetched.reply == [b"done", b"x"]


def test_a_request_its_worker_never_answers_goes_to_another(store: Store,
                                                            stack: ExitStack) -> None:
    endpoint, _, host = hosting_broker(stack, store)
    stuck = threading.Event()
    release = threading.Event()
    stack.callback(release.set)

    def hang(frames: Frames) -> Frames:
        stuck.set()
        release.wait(10)
        return [b"too late"]

    start_worker(stack, endpoint, "echo", hang)
    titanic = client(stack, endpoint)
    request_id = titanic.submit("echo", b"x")
    wait_until(stuck.is_set, message="the first worker holds the request")
    start_worker(stack, endpoint, "echo", lambda frames: [b"answered", *frames])
    fetched = titanic.wait(request_id, timeout=10)
    assert fetched.reply == [b"answered", b"x"]
    stored = store.get(request_id)
    assert stored is not None and stored.attempts >= 1
    assert host.stats.retried >= 1
    release.set()  # its reply, now late, is counted and dropped: the stored reply stays
    wait_until(lambda: host._transport is not None and host._transport.late >= 1,
               message="the late reply counted")
    assert titanic.fetch(request_id).reply == [b"answered", b"x"]


def test_stopping_hands_back_what_is_in_flight(store: Store) -> None:
    release = threading.Event()
    settings = replace(SETTINGS, request_timeout=10.0, drain_timeout=0.3)
    with ExitStack() as workers:
        with ExitStack() as stack:
            endpoint, broker, host = hosting_broker(stack, store, settings)
            start_worker(workers, endpoint, "echo",
                         lambda frames: [b"late"] if release.wait(10) else [])
            workers.callback(release.set)  # first thing when the workers stop
            titanic = client(stack, endpoint)
            request_id = titanic.submit("echo", b"x")
            wait_until(lambda: host.stats.dispatched == 1, message="the request forwarded")
        # The broker stopped: its dispatcher waited drain_timeout, then released the request.
        stored = store.get(request_id)
        assert stored is not None and stored.status is RequestStatus.PENDING
        assert host.stats.released == 1
        assert not broker.health()[0] and not host.health()[0]


@pytest.mark.postgres
def test_two_hosting_brokers_on_one_database_serve_each_others_clients(
        postgres_url: str, stack: ExitStack) -> None:
    first_store, second_store = open_store(postgres_url), open_store(postgres_url)
    for store in (first_store, second_store):
        stack.callback(store.close_store)
    first, _, _ = hosting_broker(stack, first_store)
    second, _, _ = hosting_broker(stack, second_store)
    start_worker(stack, second, "echo", lambda frames: [b"from the second", *frames])
    titanic = client(stack, first)  # the first broker has no worker for echo
    request_id = titanic.submit("echo", b"x")
    assert titanic.wait(request_id, timeout=10).reply == [b"from the second", b"x"]
    assert client(stack, second).fetch(request_id).reply == [b"from the second", b"x"]


def test_the_cli_sees_the_hosted_dispatcher_and_metrics_show_both(store: Store,
                                                                   stack: ExitStack) -> None:
    endpoint, broker, host = hosting_broker(stack, store)
    start_worker(stack, endpoint, "echo", lambda frames: frames)
    titanic = client(stack, endpoint)
    titanic.wait(titanic.submit("echo", b"x"), timeout=10)
    done = run_cli("info", "--broker", endpoint, "--json", timeout=30)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["dispatchers"][0]["instance"] == host.instance
    assert any(row["service"] == "echo" for row in info["services"])
    metrics = serve_broker_metrics("127.0.0.1:0", broker, host)
    stack.callback(metrics.stop)
    base = f"http://127.0.0.1:{metrics.port}"
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "titanic_dispatcher_completed_total 1.0" in text
    assert "titanic_broker_replies_total" in text
    with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
        assert response.status == 200
        assert b"dispatcher serving" in response.read()


def test_with_forward_linger_off_a_lone_request_is_forwarded_at_once(store: Store,
                                                                     stack: ExitStack) -> None:
    endpoint, _, host = hosting_broker(stack, store, replace(SETTINGS, forward_linger=0.0))
    start_worker(stack, endpoint, "echo", lambda frames: frames)
    titanic = client(stack, endpoint)
    for n in range(5):
        assert titanic.wait(titanic.submit("echo", b"%d" % n), timeout=10).reply == [b"%d" % n]
    assert host.stats.forwards_kept == 0
