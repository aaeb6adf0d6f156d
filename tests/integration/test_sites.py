"""Two sites joined by a link, each a broker with its dispatcher on a store of its own, in
threads: requests for a service served only at the far site go there and come back."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from titanic_support import (
    FAST_BROKER,
    fast_dispatcher,
    free_endpoint,
    run_cli,
    running,
    start_broker,
    start_worker,
    wait_until,
)

from titanic.broker import Broker
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.peer_link import PeerLink
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.ops.metrics import dispatcher_registry
from titanic.protocol import peer
from titanic.protocol.failure import FailureKind, build_failure
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Frames
from titanic.store import NewRequest, RequestStatus, Store, open_store
from titanic.testing import MemoryStore


def _store(stack: ExitStack, url: str) -> Store:
    store = open_store(url)
    stack.callback(store.close_store)
    return store


def _site(stack: ExitStack, store: Store, settings: DispatcherSettings,
          endpoint: str = "tcp://127.0.0.1:0") -> tuple[str, HostedDispatcher]:
    host = HostedDispatcher(store, settings)
    broker = Broker(endpoint, FAST_BROKER, host=host)
    broker.bind()
    stack.enter_context(running(broker))
    return broker.bound[0], host


def _client(stack: ExitStack, endpoint: str) -> TitanicClient:
    titanic = TitanicClient(endpoint, timeout=2.0, retries=3)
    stack.callback(titanic.close)
    return titanic


def _counting(seen: Counter[bytes]) -> Callable[[Frames], Frames]:
    lock = threading.Lock()

    def count(frames: Frames) -> Frames:
        with lock:
            seen[frames[0]] += 1
        return [b"far", *frames]

    return count


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def far_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The far site's store: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'far.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_requests_without_a_local_worker_are_answered_at_the_far_site(
        far_url: str, tmp_path: Path, stack: ExitStack) -> None:
    far_store = _store(stack, far_url)
    far, _ = _site(stack, far_store, fast_dispatcher(site="far"))
    seen: Counter[bytes] = Counter()
    start_worker(stack, far, "echo", _counting(seen))
    origin_store = _store(stack, f"sqlite:///{tmp_path / 'origin.db'}")
    origin, host = _site(stack, origin_store, fast_dispatcher(
        site="origin", peers=(("far", far),), peer_interval=0.2))
    titanic = _client(stack, origin)
    ids = {titanic.submit("echo", b"n%d" % n): b"n%d" % n for n in range(200)}
    for request_id, body in ids.items():
        fetched = titanic.wait(request_id, timeout=20)
        assert fetched.state is ReplyState.DONE, fetched
        assert fetched.reply == [b"far", body]
    assert all(seen[body] == 1 for body in ids.values())
    # The far copies are closed once their replies are stored at the origin.
    wait_until(lambda: not far_store.list(), message="far copies closed")
    sites = host.describe()["sites"]
    assert sites["site"] == "origin"
    (peer,) = sites["peers"]
    assert peer["name"] == "far" and peer["up"] and peer["services"]["echo"]["workers"] == 1
    assert peer["forwarded"] == 200 and peer["answered"] == 200
    assert peer["answered_per_minute"] == 200 and peer["in_flight"] == 0


def test_local_workers_come_first(tmp_path: Path, stack: ExitStack) -> None:
    far_store = _store(stack, f"sqlite:///{tmp_path / 'far.db'}")
    far, _ = _site(stack, far_store, fast_dispatcher(site="far"))
    far_seen: Counter[bytes] = Counter()
    start_worker(stack, far, "echo", _counting(far_seen))
    origin_store = _store(stack, f"sqlite:///{tmp_path / 'origin.db'}")
    origin, host = _site(stack, origin_store, fast_dispatcher(
        site="origin", peers=(("far", far),), peer_interval=0.2, peer_overflow_after=30))
    start_worker(stack, origin, "echo", lambda frames: [b"near", *frames])
    wait_until(lambda: host.describe()["sites"]["peers"][0]["up"], message="link up")
    titanic = _client(stack, origin)
    ids = [titanic.submit("echo", b"n%d" % n) for n in range(50)]
    for request_id in ids:
        assert titanic.wait(request_id, timeout=10).reply[:1] == [b"near"]
    assert not far_seen


def test_requests_wait_while_the_link_is_down_and_go_when_it_returns(
        tmp_path: Path, stack: ExitStack) -> None:
    far_endpoint = free_endpoint()
    origin_store = _store(stack, f"sqlite:///{tmp_path / 'origin.db'}")
    origin, host = _site(stack, origin_store, fast_dispatcher(
        site="origin", peers=(("far", far_endpoint),), peer_interval=0.1, peer_timeout=0.5))
    titanic = _client(stack, origin)
    ids = [titanic.submit("echo", b"n%d" % n) for n in range(20)]
    time.sleep(0.5)  # a span in which nothing may happen: no far site yet
    assert all(titanic.fetch(request_id).state is ReplyState.PENDING for request_id in ids)
    (peer,) = host.describe()["sites"]["peers"]
    assert not peer["up"] and peer["since"] is not None
    far_store = _store(stack, f"sqlite:///{tmp_path / 'far.db'}")
    _site(stack, far_store, fast_dispatcher(site="far"), far_endpoint)
    start_worker(stack, far_endpoint, "echo", lambda frames: [b"far", *frames])
    for request_id in ids:
        assert titanic.wait(request_id, timeout=15).state is ReplyState.DONE
    stored = origin_store.get(ids[0])
    assert stored is not None and stored.status is RequestStatus.DONE


def test_a_standalone_dispatcher_forwards_to_a_peer(tmp_path: Path, stack: ExitStack) -> None:
    far_store = _store(stack, f"sqlite:///{tmp_path / 'far.db'}")
    far, _ = _site(stack, far_store, fast_dispatcher(site="far"))
    start_worker(stack, far, "echo", lambda frames: [b"far", *frames])
    origin = start_broker(stack).bound[0]
    origin_store = _store(stack, f"sqlite:///{tmp_path / 'origin.db'}")
    dispatcher = Dispatcher(origin_store, fast_dispatcher(
        broker=origin, site="origin", peers=(("far", far),), peer_interval=0.2))
    stack.enter_context(running(dispatcher))
    titanic = _client(stack, origin)
    ids = [titanic.submit("echo", b"n%d" % n) for n in range(30)]
    for request_id in ids:
        assert titanic.wait(request_id, timeout=15).state is ReplyState.DONE
    (peer,) = dispatcher.describe()["sites"]["peers"]
    assert peer["answered"] == 30


def test_info_and_the_metrics_show_each_peer(tmp_path: Path, stack: ExitStack) -> None:
    far_store = _store(stack, f"sqlite:///{tmp_path / 'far.db'}")
    far, _ = _site(stack, far_store, fast_dispatcher(site="far"))
    start_worker(stack, far, "echo", lambda frames: [b"far", *frames])
    origin_store = _store(stack, f"sqlite:///{tmp_path / 'origin.db'}")
    origin, host = _site(stack, origin_store, fast_dispatcher(
        site="origin", peers=(("far", far), ("gone", free_endpoint())), peer_interval=0.1,
        peer_timeout=0.3))
    titanic = _client(stack, origin)
    request_id = titanic.submit("echo", b"x")
    assert titanic.wait(request_id, timeout=10).reply == [b"far", b"x"]
    wait_until(lambda: host.describe()["sites"]["peers"][1]["since"] is not None,
               message="the unreachable peer counted down")
    answered = run_cli("info", "--broker", origin, "--json")
    assert answered.returncode == 0, answered.stderr
    sites = json.loads(answered.stdout)["sites"]
    peers = {peer["name"]: peer for peer in sites["peers"]}
    assert sites["site"] == "origin"
    assert peers["far"]["up"] and peers["far"]["answered_per_minute"] == 1
    assert peers["far"]["services"]["echo"]["workers"] == 1
    assert not peers["gone"]["up"] and peers["gone"]["services"] == {}
    text = run_cli("info", "--broker", origin).stdout.decode()
    assert "site        origin" in text
    assert "peer        far" in text and "link up" in text and "link DOWN" in text
    exposed = generate_latest(dispatcher_registry(host)).decode()
    assert 'titanic_peer_up{peer="far"} 1.0' in exposed
    assert 'titanic_peer_up{peer="gone"} 0.0' in exposed
    assert 'titanic_peer_answered_total{peer="far"} 1.0' in exposed
    assert 'titanic_peer_service_workers{peer="far",service="echo"} 1.0' in exposed


def test_bad_peer_options_are_one_line_and_exit_2() -> None:
    for args in (["--peer", "far"], ["--peer", "a=tcp://x:1,a=tcp://y:2"], ["--site", "a b"]):
        answered = run_cli("broker", "--titanic", *args)
        assert answered.returncode == 2, answered
        assert len(answered.stderr.decode().strip().splitlines()) == 1, answered.stderr
    answered = run_cli("up", "--peer", "nameless")
    assert answered.returncode == 2 and len(answered.stderr.strip().splitlines()) == 1


def test_a_request_that_fails_at_the_far_site_fails_at_the_origin(tmp_path: Path,
                                                                   stack: ExitStack) -> None:
    far_store = _store(stack, f"sqlite:///{tmp_path / 'far.db'}")
    far, _ = _site(stack, far_store, fast_dispatcher(site="far"))
    start_worker(stack, far, "broken", lambda frames: build_failure(
        FailureKind.PERMANENT, "ValueError: no such thing"))
    origin_store = _store(stack, f"sqlite:///{tmp_path / 'origin.db'}")
    origin, _ = _site(stack, origin_store, fast_dispatcher(
        site="origin", peers=(("far", far),), peer_interval=0.1))
    titanic = _client(stack, origin)
    request_id = titanic.submit("broken", b"x")
    fetched = titanic.wait(request_id, timeout=10)
    assert fetched.state is ReplyState.FAILED, fetched
    stored = origin_store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.FAILED
    assert stored.last_error is not None
    assert stored.last_error.startswith("at site far: failed: ValueError: no such thing")
    wait_until(lambda: not far_store.list(), message="the far copy closed")


def test_requests_waiting_past_the_overflow_time_go_to_a_peer_with_free_workers(
        tmp_path: Path, stack: ExitStack) -> None:
    far_store = _store(stack, f"sqlite:///{tmp_path / 'far.db'}")
    far, _ = _site(stack, far_store, fast_dispatcher(site="far"))
    for _ in range(2):
        start_worker(stack, far, "slow", lambda frames: [b"far", *frames])
    origin_store = _store(stack, f"sqlite:///{tmp_path / 'origin.db'}")
    origin, host = _site(stack, origin_store, fast_dispatcher(
        site="origin", peers=(("far", far),), peer_interval=0.1, peer_overflow_after=0.5,
        request_timeout=30))
    release = threading.Event()

    def stuck(frames: Frames) -> Frames:
        release.wait(20)
        return [b"near", *frames]

    start_worker(stack, origin, "slow", stuck)  # holds the first request it gets
    stack.callback(release.set)  # before the worker is stopped
    wait_until(lambda: host.describe()["sites"]["peers"][0]["up"], message="link up")
    titanic = _client(stack, origin)
    ids = [titanic.submit("slow", b"n%d" % n) for n in range(30)]
    # At most a window's worth (8) goes to the local worker; the others, waiting past 0.5 s
    # for it, go to the far site, whose two workers are free.
    wait_until(lambda: sum(origin_store.get(request_id).status is RequestStatus.DONE  # type: ignore[union-attr]
                           for request_id in ids) >= 30 - 8, timeout=15,
               message="the requests beyond the local window answered at the far site")
    release.set()
    replies = [titanic.wait(request_id, timeout=40).reply or [] for request_id in ids]
    assert [reply[:1] for reply in replies].count([b"far"]) >= 30 - 8


def test_a_restarted_origin_asks_for_what_it_had_sent_at_once(tmp_path: Path,
                                                               stack: ExitStack) -> None:
    far_store = _store(stack, f"sqlite:///{tmp_path / 'far.db'}")
    far, _ = _site(stack, far_store, fast_dispatcher(site="far"))
    release = threading.Event()

    def held(frames: Frames) -> Frames:
        release.wait(20)
        return [b"far", *frames]

    start_worker(stack, far, "echo", held)
    stack.callback(release.set)  # before the worker is stopped
    origin_store = _store(stack, f"sqlite:///{tmp_path / 'origin.db'}")
    settings = fast_dispatcher(site="origin", peers=(("far", far),), peer_interval=0.1,
                               peer_lease=60)
    with ExitStack() as first:
        origin, host = _site(first, origin_store, settings)
        titanic = TitanicClient(origin, timeout=2.0, retries=3)
        first.callback(titanic.close)
        request_id = titanic.submit("echo", b"x")
        wait_until(lambda: host.describe()["sites"]["peers"][0]["forwarded"] == 1,
                   message="acknowledged at the far site")
        endpoint = origin
    # The origin stopped with the request at the far site, under a lease of 60 s.
    assert origin_store.forwards_of("far") != []
    release.set()
    _site(stack, origin_store, settings, endpoint)
    titanic = _client(stack, endpoint)
    fetched = titanic.wait(request_id, timeout=10)  # long before the lease runs out
    assert fetched.reply == [b"far", b"x"]
    wait_until(lambda: origin_store.forwards_of("far") == [], message="forgotten once stored")


def test_an_ask_closes_what_it_names_as_titanic_close_would_for_the_asker() -> None:
    store = MemoryStore()
    alices, bobs, nobodys = store.submit_many([
        NewRequest("echo", (b"1",), owner="A" * 40), NewRequest("echo", (b"2",), owner="B" * 40),
        NewRequest("echo", (b"3",))])
    link = PeerLink(store, DispatcherSettings(site="far", peer_interval=0.02), store_id="x")
    link.start()
    try:
        ask = peer.build_ask(peer.SiteState("origin"), [alices, bobs, nobodys])
        answer = link.answer(ask, Caller("A" * 40, admin=False))
        assert peer.parse_answer(answer).site == "far"
        wait_until(lambda: store.get(alices) is None, message="alice's request closed")
        wait_until(lambda: store.get(nobodys) is None, message="the ownerless one closed")
        assert store.get(bobs) is not None  # not alice's to close
        link.answer(ask)  # no caller (no CURVE): every one named
        wait_until(lambda: store.get(bobs) is None, message="closed without CURVE")
        assert link.answer([b"origin"])[0] == b"400"
    finally:
        link.stop()
