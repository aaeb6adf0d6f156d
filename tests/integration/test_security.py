"""CURVE on the broker, in threads on loopback: who is admitted, who is refused and counted, key
rotation without a restart, separate client and worker endpoints, and the per-client limits."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from titanic_support import (
    FAST_CONNECTION,
    nothing_within,
    recv_within,
    running,
    start_broker,
    start_worker,
    wait_until,
)

from titanic._zmq import SocketHook
from titanic.broker.queues import queued_cost
from titanic.client import Client
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.errors import (
    BrokerRefusedError,
    CurveKeyError,
    HandshakeRefusedError,
    TitanicTimeoutError,
)
from titanic.protocol.mdp import Frames
from titanic.security import (
    AllowedKeys,
    CurveServer,
    client_hook,
    load_keypair,
    load_public_key,
    write_keypair,
)
from titanic.settings import BrokerSettings
from titanic.store import Store, open_store

READY_ECHO = [b"", b"MDPW01", b"\x01", b"echo"]
#: ZMTP 3.0 greeting (RFC 23): signature, version 3.0, mechanism NULL, as-server 0, filler.
NULL_GREETING = (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
                 + b"\x00" * 32)
PEERS = ("alice", "bob", "worker", "dispatcher", "mallory")


@dataclass
class Keys:
    """Key pairs for every peer in `folder`; `allowed` admits alice, worker and dispatcher."""

    folder: Path
    allowed: Path

    def allow(self, name: str, folder: Path | None = None) -> None:
        """Put the key in place the way docs/security.md says: a temporary name, then rename."""
        target = (folder or self.allowed) / f"{name}.key"
        shutil.copyfile(self.folder / f"{name}.key", target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)

    def server(self, workers_allowed: Path | None = None) -> CurveServer:
        return CurveServer(load_keypair(self.folder / "broker.key_secret"), self.allowed,
                           workers_allowed=workers_allowed)

    def hook(self, name: str, server: str = "broker") -> SocketHook:
        return client_hook(load_public_key(self.folder / f"{server}.key"),
                           load_keypair(self.folder / f"{name}.key_secret"))


@pytest.fixture(scope="module")
def key_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("broker", *PEERS):
        write_keypair(folder, name)
    return folder


@pytest.fixture
def keys(key_pairs: Path, tmp_path: Path) -> Keys:
    made = Keys(key_pairs, tmp_path / "allowed")
    made.allowed.mkdir()
    for name in ("alice", "worker", "dispatcher"):
        made.allow(name)
    return made


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def call(endpoint: str, hook: SocketHook | None, service: str, *frames: bytes,
         timeout: float = 3.0) -> Frames:
    """One request on a new client (so a new connection and handshake)."""
    with Client(endpoint, timeout=timeout, retries=0, configure_socket=hook) as client:
        return client.request(service, *frames)


def refused(endpoint: str, hook: SocketHook | None, service: str = "echo") -> bool:
    try:
        call(endpoint, hook, service, b"x", timeout=0.3)
    except (TitanicTimeoutError, HandshakeRefusedError):
        return True
    return False


def has_worker(endpoint: str, hook: SocketHook, service: str) -> bool:
    return call(endpoint, hook, "mmi.service", service.encode()) == [b"200"]


def start_dispatcher(stack: ExitStack, endpoint: str, hook: SocketHook,
                     tmp_path: Path) -> Store:
    store = open_store(f"sqlite:///{tmp_path / 'titanic.db'}")
    stack.callback(store.close_store)
    settings = DispatcherSettings(broker=endpoint, presence_interval=0.05,
                                  connection=FAST_CONNECTION)
    stack.enter_context(running(Dispatcher(store, settings, configure_socket=hook)))
    return store


@contextmanager
def dealer(endpoint: str, hook: SocketHook | None) -> Iterator[zmq.Socket[bytes]]:
    """A bare DEALER, optionally speaking CURVE, for the protocol by hand."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    if hook is not None:
        hook(sock)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(0)
        context.term()


# -- key files ----------------------------------------------------------------------------------

def test_keygen_writes_an_owner_only_secret_and_never_overwrites(tmp_path: Path) -> None:
    public_file, secret_file = write_keypair(tmp_path / "new", "node-1")
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_file.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    pair = load_keypair(secret_file)
    assert load_public_key(public_file) == pair.public == zmq.curve_public(pair.secret)
    assert "secret-key" not in public_file.read_text()
    with pytest.raises(CurveKeyError, match="not overwriting"):
        write_keypair(tmp_path / "new", "node-1")
    with pytest.raises(CurveKeyError, match="bad key name"):
        write_keypair(tmp_path, "../escape")


def test_malformed_or_wrong_key_files_are_clear_errors(tmp_path: Path) -> None:
    public_file, secret_file = write_keypair(tmp_path, "k")
    with pytest.raises(CurveKeyError, match="holds no secret key"):
        load_keypair(public_file)
    with pytest.raises(CurveKeyError, match="does not exist"):
        load_keypair(tmp_path / "absent.key_secret")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"\x00\xff not a certificate")
    with pytest.raises(CurveKeyError, match="no CURVE public key"):
        load_public_key(garbage)
    short = tmp_path / "short.key"
    short.write_text('metadata\ncurve\n    public-key = "tooshort"\n')
    with pytest.raises(CurveKeyError, match="not a 40-character Z85"):
        load_public_key(short)
    mixed = tmp_path / "mixed.key_secret"
    other = write_keypair(tmp_path, "other")[1].read_text()
    mixed.write_text(public_file.read_text() + other.split("curve\n", 1)[1].split("\n")[1])
    with pytest.raises(CurveKeyError, match="does not match"):
        load_keypair(mixed)
    with pytest.raises(CurveKeyError, match="does not exist"):
        CurveServer(load_keypair(secret_file), tmp_path / "no-such-folder")


def test_key_file_rewritten_in_place_is_noticed(keys: Keys, tmp_path: Path) -> None:
    folder = tmp_path / "rotating"
    folder.mkdir()
    target = folder / "peer.key"
    alice, bob = (load_public_key(keys.folder / f"{n}.key") for n in ("alice", "bob"))

    def certificate(key: bytes) -> bytes:  # the same length for every key
        return b'metadata\ncurve\n    public-key = "' + key + b'"\n'

    target.write_bytes(certificate(alice))
    old = os.stat(target)
    os.utime(target, ns=(old.st_atime_ns - 10**10, old.st_mtime_ns - 10**10))  # not "racy"
    allowed = AllowedKeys(folder)
    assert allowed.keys() == {alice}
    before = os.stat(target)
    target.write_bytes(certificate(bob))  # same name, inode and size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime
    assert os.stat(target).st_size == before.st_size
    assert allowed.keys() == {bob}


# -- who is admitted ----------------------------------------------------------------------------

def test_allowed_client_worker_and_dispatcher_are_served(keys: Keys, stack: ExitStack,
                                                         tmp_path: Path) -> None:
    broker = start_broker(stack, curve=keys.server())
    endpoint = broker.bound[0]
    start_worker(stack, endpoint, "echo", configure_socket=keys.hook("worker"))
    assert call(endpoint, keys.hook("alice"), "echo", b"over CURVE") == [b"over CURVE"]
    start_dispatcher(stack, endpoint, keys.hook("dispatcher"), tmp_path)
    with TitanicClient(endpoint, timeout=3, retries=2,
                       configure_socket=keys.hook("alice")) as titanic:
        request_id = titanic.submit("echo", b"durable")
        fetched = titanic.wait(request_id, timeout=15)
        assert fetched.state is ReplyState.DONE and fetched.reply == [b"durable"]
        titanic.close_request(request_id)
        assert titanic.fetch(request_id).state is ReplyState.UNKNOWN
    # No allowed key was refused. (Failed handshakes may be counted on a loaded machine: a
    # worker whose liveness runs out mid-handshake closes that socket and connects anew.)
    assert broker.stats.keys_refused == broker.stats.plaintext_refused == 0
    assert broker.curve is not None and broker.curve.refused == 0


def test_worker_with_unknown_key_cannot_register(keys: Keys, stack: ExitStack,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="titanic.security")
    broker = start_broker(stack, curve=keys.server())
    curve = broker.curve
    assert curve is not None
    endpoint = broker.bound[0]
    with dealer(endpoint, keys.hook("mallory")) as impostor:
        impostor.send_multipart(READY_ECHO)
        wait_until(lambda: broker.stats.keys_refused == 1, message="worker refused")
        assert nothing_within(impostor, 0.2)
        assert not has_worker(endpoint, keys.hook("alice"), "echo")  # mmi.service says 404
    assert broker.stats.workers_registered == 0
    # The ZAP handler counted and logged the refusal: the peer's address, its key, the folder.
    assert curve.refused >= 1
    mallory = load_keypair(keys.folder / "mallory.key_secret").public.decode()
    refusals = [r.getMessage() for r in caplog.records if "refused CURVE peer" in r.getMessage()]
    assert refusals and refusals[0].startswith(
        f"refused CURVE peer at 127.0.0.1 on the broker's endpoint: key {mallory} is not in ")
    admitted = curve.admitted
    with dealer(endpoint, keys.hook("worker")) as allowed:  # the same READY, an allowed key
        allowed.send_multipart(READY_ECHO)
        wait_until(lambda: has_worker(endpoint, keys.hook("alice"), "echo"))
    assert curve.admitted > admitted


def test_client_with_unknown_key_cannot_submit_fetch_or_close(keys: Keys, stack: ExitStack,
                                                              tmp_path: Path) -> None:
    broker = start_broker(stack, curve=keys.server())
    endpoint = broker.bound[0]
    store = start_dispatcher(stack, endpoint, keys.hook("dispatcher"), tmp_path)
    wait_until(lambda: has_worker(endpoint, keys.hook("alice"), "titanic.request"))
    with TitanicClient(endpoint, timeout=0.3, retries=0,
                       configure_socket=keys.hook("mallory")) as titanic:
        # Told at once by the socket's monitor, not after the timeout.
        for attempt in (lambda: titanic.submit("echo", b"sneaky"),
                        lambda: titanic.fetch("0" * 32),
                        lambda: titanic.close_request("0" * 32)):
            with pytest.raises(HandshakeRefusedError, match="refused this CURVE key"):
                attempt()
    wait_until(lambda: broker.stats.keys_refused >= 3, message="three refusals counted")
    assert store.list(limit=10) == []
    assert broker.stats.requests == 0  # nothing of mallory's got through; alice asked mmi only


def test_plaintext_peer_is_refused_and_counted(keys: Keys, stack: ExitStack) -> None:
    broker = start_broker(stack, curve=keys.server())
    endpoint = broker.bound[0]
    start_worker(stack, endpoint, "echo", configure_socket=keys.hook("worker"))
    with dealer(endpoint, None) as plain_client, dealer(endpoint, None) as plain_worker:
        plain_client.send_multipart([b"", b"MDPC01", b"echo", b"in the clear"])
        plain_worker.send_multipart(READY_ECHO)
        # Refused and counted as failed handshakes; named plaintext only when libzmq saw the
        # mismatch before the peer, which sees it too, hung up.
        wait_until(lambda: broker.stats.handshakes_failed >= 2, message="plaintext refused")
        assert nothing_within(plain_client, 0.2)
    assert broker.stats.workers_registered == 1  # the CURVE worker only
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(NULL_GREETING)  # a plaintext ZMTP 3.0 peer that stays to hear the answer
        wait_until(lambda: broker.stats.plaintext_refused >= 1, message="named plaintext")
    assert broker.stats.keys_refused == 0
    assert broker.stats.requests == 0
    assert call(endpoint, keys.hook("alice"), "echo", b"still served") == [b"still served"]


def test_wrong_server_key_is_refused(keys: Keys, stack: ExitStack) -> None:
    broker = start_broker(stack, curve=keys.server())
    endpoint = broker.bound[0]
    start_worker(stack, endpoint, "echo", configure_socket=keys.hook("worker"))
    assert refused(endpoint, keys.hook("alice", server="bob"))
    wait_until(lambda: broker.stats.handshakes_failed >= 1, message="handshake failure counted")
    assert broker.stats.keys_refused == 0


# -- rotation -----------------------------------------------------------------------------------

def test_key_added_to_the_folder_is_admitted_without_restart(keys: Keys,
                                                             stack: ExitStack) -> None:
    broker = start_broker(stack, curve=keys.server())
    endpoint = broker.bound[0]
    start_worker(stack, endpoint, "echo", configure_socket=keys.hook("worker"))
    assert refused(endpoint, keys.hook("bob"))
    keys.allow("bob")
    assert call(endpoint, keys.hook("bob"), "echo", b"let in") == [b"let in"]
    assert broker.stats.keys_refused >= 1  # 2 when the client's reopen() handshook in time


def test_worker_refused_at_first_registers_once_its_key_is_added(keys: Keys,
                                                                 stack: ExitStack) -> None:
    broker = start_broker(stack, curve=keys.server())
    endpoint = broker.bound[0]
    # a real Worker, its key not yet allowed
    start_worker(stack, endpoint, "echo", configure_socket=keys.hook("bob"))
    wait_until(lambda: broker.stats.keys_refused >= 2, message="worker refused, and retrying")
    assert not has_worker(endpoint, keys.hook("alice"), "echo")
    keys.allow("bob")
    wait_until(lambda: has_worker(endpoint, keys.hook("alice"), "echo"),
               message="worker registered without a restart")
    assert call(endpoint, keys.hook("alice"), "echo", b"welcome") == [b"welcome"]


def test_key_removed_from_the_folder_is_refused_for_new_connections(keys: Keys,
                                                                    stack: ExitStack) -> None:
    broker = start_broker(stack, curve=keys.server())
    endpoint = broker.bound[0]
    start_worker(stack, endpoint, "echo", configure_socket=keys.hook("worker"))
    with Client(endpoint, timeout=3, retries=0, configure_socket=keys.hook("alice")) as open_one:
        assert open_one.request("echo", b"before") == [b"before"]
        (keys.allowed / "alice.key").unlink()
        assert refused(endpoint, keys.hook("alice"))
        # A connection admitted before stays admitted until it closes (documented).
        assert open_one.request("echo", b"still open") == [b"still open"]
    wait_until(lambda: broker.stats.keys_refused >= 1)


# -- separate endpoints -------------------------------------------------------------------------

def test_separate_endpoints_serve_each_role_on_its_own(stack: ExitStack) -> None:
    broker = start_broker(stack, worker_endpoint=True)
    clients, workers = broker.bound[0], broker.worker_bound[0]
    start_worker(stack, workers, "echo")
    assert call(clients, None, "echo", b"routed") == [b"routed"]
    with dealer(clients, None) as intruder:
        intruder.send_multipart([b"", b"MDPW01", b"\x01", b"stolen"])
        assert recv_within(intruder) == [b"", b"MDPW01", b"\x05"]  # DISCONNECT
    assert not has_worker(clients, None, "stolen")
    with dealer(workers, None) as lost:
        lost.send_multipart([b"", b"MDPC01", b"echo", b"wrong door"])
        assert nothing_within(lost, 0.3)
    assert broker.stats.workers_on_client_endpoint == 1
    assert broker.stats.clients_on_worker_endpoint == 1


def test_separate_endpoints_admit_workers_and_clients_by_their_own_keys(
        keys: Keys, stack: ExitStack, tmp_path: Path) -> None:
    workers_allowed = tmp_path / "workers"
    workers_allowed.mkdir()
    keys.allow("worker", workers_allowed)
    (keys.allowed / "worker.key").unlink()  # clients' folder: alice and dispatcher only
    broker = start_broker(stack, curve=keys.server(workers_allowed), worker_endpoint=True)
    clients, workers = broker.bound[0], broker.worker_bound[0]
    start_worker(stack, workers, "echo", configure_socket=keys.hook("worker"))
    assert call(clients, keys.hook("alice"), "echo", b"hello") == [b"hello"]
    with dealer(clients, keys.hook("worker")) as worker_at_client_door, \
            dealer(workers, keys.hook("alice")) as client_at_worker_door:
        worker_at_client_door.send_multipart([b"", b"MDPW01", b"\x01", b"via-client-door"])
        client_at_worker_door.send_multipart([b"", b"MDPW01", b"\x01", b"alice-as-worker"])
        wait_until(lambda: broker.stats.keys_refused == 2, message="both refused by key")
    assert not has_worker(clients, keys.hook("alice"), "via-client-door")
    assert not has_worker(clients, keys.hook("alice"), "alice-as-worker")
    assert broker.stats.workers_registered == 1


# -- limits -------------------------------------------------------------------------------------

def test_oversized_request_is_refused_with_413_and_others_are_served(keys: Keys,
                                                                     stack: ExitStack) -> None:
    settings = BrokerSettings(heartbeat_interval=0.1, max_request_size=1000,
                              max_message_size=4000)
    broker = start_broker(stack, settings, curve=keys.server())
    endpoint = broker.bound[0]
    start_worker(stack, endpoint, "echo", configure_socket=keys.hook("worker"))
    alice = keys.hook("alice")
    with pytest.raises(BrokerRefusedError,
                       match="413 request of 1001 bytes exceeds the broker's limit of 1000"):
        call(endpoint, alice, "echo", b"x" * 600, b"y" * 397)
    assert call(endpoint, alice, "echo", b"x" * 996) == [b"x" * 996]  # the name counts: 1000
    with dealer(endpoint, alice) as huge:  # beyond the hard limit: libzmq cuts the connection
        huge.send_multipart([b"", b"MDPC01", b"echo", b"h" * 4001])
        assert nothing_within(huge, 0.3)
    assert call(endpoint, alice, "echo", b"after") == [b"after"]
    assert broker.stats.oversized_requests == 1


def test_client_over_its_queue_limit_gets_503_and_others_are_served(keys: Keys,
                                                                    stack: ExitStack) -> None:
    settings = BrokerSettings(heartbeat_interval=0.1, request_ttl=30,
                              max_queued_bytes_per_client=2 * queued_cost(b"later", [b"greedy-0"]))
    broker = start_broker(stack, settings, curve=keys.server())
    endpoint = broker.bound[0]
    keys.allow("bob")
    with dealer(endpoint, keys.hook("alice")) as greedy, dealer(endpoint,
                                                                keys.hook("bob")) as modest:
        for n in range(3):
            greedy.send_multipart([b"", b"MDPC01", b"later", b"greedy-%d" % n])
        answer = recv_within(greedy)
        assert answer[:3] == [b"", b"MDPC01", b"later"]
        assert answer[3] == b"503"
        assert answer[4].startswith(b"this key has ")
        modest.send_multipart([b"", b"MDPC01", b"later", b"modest"])
        wait_until(lambda: broker.stats.queued == 3, message="three requests queued")
        start_worker(stack, endpoint, "later", configure_socket=keys.hook("worker"))
        served = {recv_within(greedy)[3], recv_within(greedy)[3], recv_within(modest)[3]}
        assert served == {b"greedy-0", b"greedy-1", b"modest"}
        greedy.send_multipart([b"", b"MDPC01", b"later", b"again"])  # its queue is empty again
        assert recv_within(greedy)[3] == b"again"
    assert broker.stats.over_client_limit == 1


def test_connections_of_one_key_share_its_queue_limit(keys: Keys, stack: ExitStack) -> None:
    settings = BrokerSettings(heartbeat_interval=0.1, request_ttl=30,
                              max_queued_bytes_per_client=2 * queued_cost(b"later", [b"one"]))
    broker = start_broker(stack, settings, curve=keys.server())
    endpoint = broker.bound[0]
    with dealer(endpoint, keys.hook("alice")) as first, \
            dealer(endpoint, keys.hook("alice")) as second, \
            dealer(endpoint, keys.hook("alice")) as third:
        first.send_multipart([b"", b"MDPC01", b"later", b"one"])
        second.send_multipart([b"", b"MDPC01", b"later", b"two"])
        wait_until(lambda: broker.stats.queued == 2, message="two requests queued")
        third.send_multipart([b"", b"MDPC01", b"later", b"three"])
        assert recv_within(third)[3:5] == [b"503", b"this key has %d bytes of requests "
                                           b"queued, its limit: retry later"
                                           % (2 * queued_cost(b"later", [b"one"]))]
        start_worker(stack, endpoint, "later", configure_socket=keys.hook("worker"))
        assert recv_within(first)[3] == b"one"
        assert recv_within(second)[3] == b"two"
        third.send_multipart([b"", b"MDPC01", b"later", b"three again"])  # room again
        assert recv_within(third)[3] == b"three again"
    assert broker.stats.over_client_limit == 1
