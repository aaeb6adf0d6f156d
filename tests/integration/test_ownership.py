"""Requests belong to the CURVE key that submitted them, tried from outside: real broker,
dispatcher, worker and clients on loopback, each client with its own key."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import zmq
from titanic_support import FAST_CONNECTION, nothing_within, recv_within, running, start_broker

from titanic._zmq import SocketHook
from titanic.client import Client
from titanic.client.tsp import ReplyState, TitanicClient, TitanicServiceError
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.errors import IdentityRefusedError, TitanicTimeoutError
from titanic.protocol import manage
from titanic.protocol.identity import IDENTITY_OPTION
from titanic.security import CurveServer, client_hook, load_keypair, write_keypair
from titanic.store import SqlStore, open_store
from titanic.worker import Worker

#: Clients and the echo worker are allowed; the dispatcher and the operator are admin keys.
ALLOWED = ("alice", "bob", "worker")
ADMIN = ("dispatcher", "root")


class Keys:
    """Key pairs in a folder, with the broker's allowed and admin folders."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.allowed = folder / "allowed"
        self.admin = folder / "admin"

    def public(self, name: str) -> bytes:
        return load_keypair(self.folder / f"{name}.key_secret").public

    def hook(self, name: str) -> SocketHook:
        return client_hook(self.public("broker"), load_keypair(self.folder /
                                                              f"{name}.key_secret"))

    def server(self) -> CurveServer:
        return CurveServer(load_keypair(self.folder / "broker.key_secret"), self.allowed,
                           admin=self.admin)


@pytest.fixture(scope="module")
def key_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("broker", *ALLOWED, *ADMIN):
        write_keypair(folder, name)
    return folder


@pytest.fixture
def keys(key_pairs: Path, tmp_path: Path) -> Keys:
    made = Keys(key_pairs)
    made.allowed = tmp_path / "allowed"
    made.admin = tmp_path / "admin"
    for folder, names in ((made.allowed, ALLOWED), (made.admin, ADMIN)):
        folder.mkdir()
        for name in names:
            shutil.copyfile(key_pairs / f"{name}.key", folder / f"{name}.key")
    return made


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def start_dispatcher(stack: ExitStack, endpoint: str, hook: SocketHook | None, tmp_path: Path,
                     **settings: object) -> tuple[Dispatcher, SqlStore]:
    store = open_store(f"sqlite:///{tmp_path / 'titanic.db'}")
    stack.callback(store.close_store)
    dispatcher = Dispatcher(store, DispatcherSettings(
        broker=endpoint, presence_interval=0.05, identities=hook is not None,
        connection=FAST_CONNECTION,
        **settings), configure_socket=hook)  # type: ignore[arg-type]
    stack.enter_context(running(dispatcher))
    return dispatcher, store


def start_echo(stack: ExitStack, endpoint: str, hook: SocketHook | None) -> None:
    stack.enter_context(running(Worker(endpoint, "echo", lambda frames: frames,
                                       heartbeat_interval=0.1, reconnect_initial=0.05,
                                       configure_socket=hook)))


def titanic(stack: ExitStack, endpoint: str, hook: SocketHook | None) -> TitanicClient:
    client = TitanicClient(endpoint, timeout=3, retries=2, configure_socket=hook)
    stack.callback(client.close)
    return client


def has_worker(endpoint: str, hook: SocketHook | None, service: bytes) -> bool:
    with Client(endpoint, timeout=3, retries=0, configure_socket=hook) as client:
        return client.request("mmi.service", service) == [b"200"]


def test_each_key_sees_only_its_own_requests_and_an_admin_sees_all(
        keys: Keys, stack: ExitStack, tmp_path: Path) -> None:
    endpoint = start_broker(stack, curve=keys.server()).bound[0]
    _, store = start_dispatcher(stack, endpoint, keys.hook("dispatcher"), tmp_path)
    start_echo(stack, endpoint, keys.hook("worker"))
    alice, bob, root = (titanic(stack, endpoint, keys.hook(n)) for n in ("alice", "bob", "root"))
    alices, bobs = alice.submit("echo", b"alice's"), bob.submit("echo", b"bob's")
    assert alice.wait(alices, timeout=15).reply == [b"alice's"]
    assert bob.wait(bobs, timeout=15).reply == [b"bob's"]
    assert store.get(alices).owner == keys.public("alice").decode()  # type: ignore[union-attr]
    # Another key: exactly what an unknown UUID gets, and its close changes nothing.
    unknown = bob.fetch("0" * 32)
    assert unknown.state is ReplyState.UNKNOWN
    assert bob.fetch(alices) == unknown
    assert alice.fetch(bobs) == unknown
    bob.close_request(alices)
    assert alice.fetch(alices).reply == [b"alice's"]
    # The admin key sees and closes both.
    assert root.fetch(alices).reply == [b"alice's"]
    assert root.fetch(bobs).reply == [b"bob's"]
    root.close_request(bobs)
    assert bob.fetch(bobs) == unknown
    alice.close_request(alices)
    assert root.fetch(alices) == unknown


def test_a_forged_identity_frame_gets_nothing(keys: Keys, stack: ExitStack,
                                              tmp_path: Path) -> None:
    broker = start_broker(stack, curve=keys.server())
    endpoint = broker.bound[0]
    _, store = start_dispatcher(stack, endpoint, keys.hook("dispatcher"), tmp_path)
    alice = titanic(stack, endpoint, keys.hook("alice"))
    alices = alice.submit("later", b"private")
    forged = b"admin " + keys.public("alice")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stack.callback(context.term)

    def as_bob(*frames: bytes) -> list[bytes]:
        # A raw MDP client with Bob's key, retrying on a new socket as MDP clients do: with
        # heartbeats this quick, a loaded machine can make the broker give up on a dispatcher
        # connection that then takes a request down with it.
        for _ in range(5):
            bob = context.socket(zmq.DEALER)
            try:
                keys.hook("bob")(bob)
                bob.connect(endpoint)
                bob.send_multipart([b"", b"MDPC01", *frames])
                if bob.poll(3000):
                    return bob.recv_multipart()[3:]
            finally:
                bob.close(0)
        raise AssertionError(f"no answer to {frames[0]!r} in five tries")

    # Bob's frames that look like the broker's caller frame and envelope are only his body.
    assert as_bob(b"titanic.reply", forged, b"", alices.encode()) == [b"400", b"unknown"]
    assert as_bob(b"titanic.reply", alices.encode(), forged) == [b"400", b"unknown"]
    assert as_bob(b"titanic.close", forged, b"", alices.encode()) == [b"200"]
    status, bobs = as_bob(b"titanic.request", b"later", forged)
    assert status == b"200"
    stored = store.get(bobs.decode())
    assert stored is not None and stored.owner == keys.public("bob").decode()
    assert stored.request == (forged,)
    assert alice.fetch(bobs.decode()).state is ReplyState.UNKNOWN
    assert alice.fetch(alices).state is ReplyState.PENDING  # still there, still alice's
    # Nor can an allowed worker key ask to be told its callers.
    impostor = context.socket(zmq.DEALER)
    stack.callback(impostor.close, 0)
    keys.hook("worker")(impostor)
    impostor.connect(endpoint)
    impostor.send_multipart([b"", b"MDPW01", b"\x01", b"later", IDENTITY_OPTION])
    assert recv_within(impostor) == [b"", b"MDPW01", b"\x05",  # DISCONNECT, saying why
                                     b"titanic:identity/1 refused"]
    assert broker.stats.identities_refused == 1
    assert not has_worker(endpoint, keys.hook("alice"), b"later")
    assert nothing_within(impostor, 0.1)


def test_a_dispatcher_without_an_admin_key_is_not_told_identities(
        keys: Keys, stack: ExitStack, tmp_path: Path) -> None:
    (keys.admin / "dispatcher.key").unlink()
    shutil.copyfile(keys.folder / "dispatcher.key", keys.allowed / "dispatcher.key")
    broker = start_broker(stack, curve=keys.server())
    endpoint = broker.bound[0]
    store = open_store(f"sqlite:///{tmp_path / 'titanic.db'}")
    stack.callback(store.close_store)
    dispatcher = Dispatcher(store, DispatcherSettings(
        broker=endpoint, presence_interval=0.05, identities=True,
        connection=FAST_CONNECTION),
        configure_socket=keys.hook("dispatcher"))
    outcome: list[BaseException] = []

    def serve() -> None:
        try:
            dispatcher.run()
        except BaseException as exc:  # noqa: BLE001 - what run() ended with is the result
            outcome.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        dispatcher.stop()
        thread.join(10)
        raise AssertionError("a refused dispatcher kept trying instead of stopping")
    assert len(outcome) == 1 and isinstance(outcome[0], IdentityRefusedError), outcome
    assert "admin folder" in str(outcome[0])
    assert not has_worker(endpoint, keys.hook("alice"), b"titanic.request")
    # Each of its connections was refused once at most (READYs sent before it stopped may
    # still arrive): it stopped instead of registering again and again.
    s = dispatcher.settings
    connections = (s.request_connections + 2 * s.reply_connections + s.close_connections
                   + s.wait_connections + 5)  # titanic.replies; titanic.store, .manage, .peer,
    # .cancel, .cancelled
    assert 1 <= broker.stats.identities_refused <= connections
    with (TitanicClient(endpoint, timeout=0.3, retries=0,
                        configure_socket=keys.hook("alice")) as alice,
          pytest.raises(TitanicTimeoutError)):
        alice.submit("echo", b"x")


def test_management_serves_admin_keys_only(keys: Keys, stack: ExitStack,
                                           tmp_path: Path) -> None:
    endpoint = start_broker(stack, curve=keys.server()).bound[0]
    dispatcher, _ = start_dispatcher(stack, endpoint, keys.hook("dispatcher"), tmp_path)
    titanic(stack, endpoint, keys.hook("alice")).submit("later", b"x")
    info = manage.build_request(manage.Command.INFO)
    with Client(endpoint, timeout=3, retries=2, configure_socket=keys.hook("root")) as root:
        code, _, payload = manage.parse_reply(root.request(manage.SERVICE, *info))
    assert code == 200 and [row["service"] for row in payload["services"]] == ["later"]
    with Client(endpoint, timeout=3, retries=2, configure_socket=keys.hook("alice")) as alice:
        code, text, payload = manage.parse_reply(alice.request(manage.SERVICE, *info))
    assert (code, payload) == (400, {})
    assert "admin keys only" in text
    assert dispatcher.management.refused == 1


def test_a_key_over_its_stored_limit_gets_503_and_others_are_served(
        keys: Keys, stack: ExitStack, tmp_path: Path) -> None:
    endpoint = start_broker(stack, curve=keys.server()).bound[0]
    dispatcher, store = start_dispatcher(stack, endpoint, keys.hook("dispatcher"), tmp_path,
                                         max_stored_per_key=2)
    alice, bob = (titanic(stack, endpoint, keys.hook(n)) for n in ("alice", "bob"))
    first = alice.submit("nobody", b"1")
    alice.submit("nobody", b"2")
    with pytest.raises(TitanicServiceError, match="503 too many stored requests for this key "
                                                  r"\(limit 2\): retry later"):
        alice.submit("nobody", b"3")
    bob.submit("nobody", b"bob's")
    assert dispatcher.stats.over_key_limit == 1
    alice.close_request(first)  # room again
    alice.submit("nobody", b"3")
    assert [r.request for r in store.list(limit=10)] == [(b"2",), (b"bob's",), (b"3",)]


def test_ownership_holds_across_two_brokers_and_two_dispatchers(
        keys: Keys, stack: ExitStack, tmp_path: Path) -> None:
    brokers = [start_broker(stack, curve=keys.server()).bound[0] for _ in range(2)]
    store = open_store(f"sqlite:///{tmp_path / 'titanic.db'}")
    stack.callback(store.close_store)
    dispatchers = [Dispatcher(store, DispatcherSettings(
        broker=brokers, presence_interval=0.05, identities=True, identity_timeout=1.0,
        connection=FAST_CONNECTION),
        configure_socket=keys.hook("dispatcher")) for _ in range(2)]
    for dispatcher in dispatchers:
        stack.enter_context(running(dispatcher))
    stack.enter_context(running(Worker(brokers, "echo", lambda frames: frames,
                                       heartbeat_interval=0.1, reconnect_initial=0.05,
                                       configure_socket=keys.hook("worker"))))
    first, second = brokers
    alice_first = titanic(stack, first, keys.hook("alice"))
    alice_second, bob_second, root_second = (titanic(stack, second, keys.hook(n))
                                             for n in ("alice", "bob", "root"))
    alices = alice_first.submit("echo", b"through the first broker")
    bobs = bob_second.submit("echo", b"through the second")
    assert alice_second.wait(alices, timeout=15).reply == [b"through the first broker"]
    unknown = bob_second.fetch("0" * 32)
    assert bob_second.fetch(alices) == unknown
    assert titanic(stack, first, keys.hook("bob")).fetch(alices) == unknown
    bob_second.close_request(alices)
    assert root_second.fetch(alices).reply == [b"through the first broker"]
    assert root_second.wait(bobs, timeout=15).reply == [b"through the second"]
    forged = titanic(stack, second, keys.hook("bob"))
    # A body naming alice, as the caller frame would: still bob's own request.
    forged_id = forged.submit("echo", b"admin " + keys.public("alice"))
    assert alice_first.fetch(forged_id) == unknown
    assert store.get(forged_id).owner == keys.public("bob").decode()  # type: ignore[union-attr]
    assert {r.owner for r in store.list(limit=10)} == {keys.public("alice").decode(),
                                                       keys.public("bob").decode()}


def test_without_curve_there_is_no_ownership(stack: ExitStack, tmp_path: Path) -> None:
    endpoint = start_broker(stack).bound[0]
    _, store = start_dispatcher(stack, endpoint, None, tmp_path)
    start_echo(stack, endpoint, None)
    one, other = titanic(stack, endpoint, None), titanic(stack, endpoint, None)
    request_id = one.submit("echo", b"anyone's")
    assert other.wait(request_id, timeout=15).reply == [b"anyone's"]
    assert store.get(request_id).owner is None  # type: ignore[union-attr]
    other.close_request(request_id)
    assert one.fetch(request_id).state is ReplyState.UNKNOWN
