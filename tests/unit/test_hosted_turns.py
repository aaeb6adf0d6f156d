"""The dispatcher in the broker's loop, driven turn by turn over a BrokerCore and a MemoryStore:
frames and a fake clock in, frames out, no socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from titanic_support import wait_until

from titanic.broker.core import BrokerCore, Endpoint, Outgoing
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.settings import DispatcherSettings
from titanic.protocol import manage
from titanic.store import RequestStatus
from titanic.testing import MemoryStore

SHARED = Endpoint.SHARED
SETTINGS = DispatcherSettings(request_timeout=1.0, backoff=0.0, backoff_max=0.0,
                              reply_linger=0.0, forward_linger=0.0, max_attempts=3)
KEY = b"rq8#3ZrN+]T.Yd3hQ/?pBcKX>Tp-1H[*3Rw[Vdsd"  # 40 characters, as a Z85 key


class CoreOnly:
    """What a HostedDispatcher uses of its Broker: the core, and a send that keeps what it is
    given."""

    def __init__(self, core: BrokerCore) -> None:
        self.core = core
        self.out: list[list[bytes]] = []

    def send(self, out: list[Outgoing]) -> None:
        self.out.extend(frames for _, frames, _ in out)

    def taken(self) -> list[list[bytes]]:
        out, self.out = self.out, []
        return out


class Loop:
    """A hosted dispatcher, its core and a fake clock."""

    def __init__(self, settings: DispatcherSettings = SETTINGS) -> None:
        self.store = MemoryStore()
        self.host = HostedDispatcher(self.store, settings)
        self.broker = CoreOnly(BrokerCore(local_services=self.host.services))
        self.now = 0.0
        self.host.start(self.broker, self.now)  # type: ignore[arg-type]

    def turn(self, step: float = 0.01) -> float:
        self.now += step
        return self.host.turn(self.now)

    def receive(self, *frames: bytes, user: bytes | None = None) -> None:
        self.broker.send(self.broker.core.receive(list(frames), SHARED, self.now, user))

    def ready(self, worker: bytes = b"W") -> None:
        self.receive(worker, b"", b"MDPW01", b"\x01", b"echo")

    def client(self, service: bytes, *body: bytes, client: bytes = b"C",
               user: bytes | None = None) -> list[bytes]:
        """A 7/MDP request from `client` and the body of the answer it got in the next turn."""
        self.receive(client, b"", b"MDPC01", service, *body, user=user)
        self.turn()
        answers = [frames for frames in self.broker.taken() if frames[0] == client]
        assert len(answers) == 1, answers
        assert answers[0][:4] == [client, b"", b"MDPC01", service]
        return answers[0][4:]

    def submit(self, *body: bytes, user: bytes | None = None) -> str:
        status, request_id = self.client(b"titanic.request", b"echo", *body, user=user)
        assert status == b"200"
        return request_id.decode()

    def forwards(self, worker: bytes = b"W") -> list[list[bytes]]:
        """The REQUESTs the broker sent the worker since the last look (sent stays empty)."""
        return [frames for frames in self.broker.taken()
                if frames[:4] == [worker, b"", b"MDPW01", b"\x02"]]

    def close(self) -> None:
        self.host.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    try:
        yield made
    finally:
        made.close()


def test_a_request_is_stored_answered_forwarded_and_its_reply_stored(loop: Loop) -> None:
    loop.ready()
    request_id = loop.submit(b"hello")
    assert loop.store.get(request_id) is not None  # stored before its 200 went out
    for _ in range(3):  # the mmi question is answered within the core: a turn or two
        loop.turn()
        forwards = loop.forwards()
        if forwards:
            break
    [[_, _, _, _, address, _, body]] = forwards
    assert body == b"hello"
    loop.receive(b"W", b"", b"MDPW01", b"\x03", address, b"", b"HELLO")
    loop.turn()
    stored = loop.store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.DONE
    assert stored.reply == (b"HELLO",)
    assert loop.client(b"titanic.reply", request_id.encode()) == [b"200", b"HELLO"]
    assert loop.client(b"titanic.close", request_id.encode()) == [b"200"]
    assert loop.store.get(request_id) is None
    assert loop.host.stats.completed == 1


def test_without_workers_nothing_is_forwarded_and_the_request_waits(loop: Loop) -> None:
    request_id = loop.submit(b"x")
    for _ in range(3):
        loop.turn()
    assert loop.forwards() == []
    assert loop.client(b"titanic.reply", request_id.encode()) == [b"300", b"pending"]


def test_a_forward_without_a_reply_times_out_and_is_sent_again(loop: Loop) -> None:
    loop.ready()
    request_id = loop.submit(b"x")
    while not (first := loop.forwards()):
        loop.turn()
    wake = loop.turn(0.0)
    assert wake <= loop.now + SETTINGS.request_timeout  # the loop wakes for the timeout
    loop.turn(SETTINGS.request_timeout)  # W never answers
    stored = loop.store.get(request_id)
    assert stored is not None and stored.attempts == 1 and stored.last_error
    loop.ready(b"W2")  # W still holds the first: the retry goes to the idle W2
    for _ in range(5):
        again = loop.forwards(b"W2")
        if again:
            break
        loop.turn(SETTINGS.request_timeout)
    assert again and again[0][-1] == b"x"
    assert again[0][4] != first[0][4]  # a new address: a late reply to the first is not it
    loop.receive(b"W", b"", b"MDPW01", b"\x03", first[0][4], b"", b"late")
    loop.turn()
    assert loop.host._transport is not None and loop.host._transport.late == 1
    stored = loop.store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.DISPATCHED


def test_titanic_store_names_the_store(loop: Loop) -> None:
    status, identity, location, limit, extensions = loop.client(b"titanic.store")
    assert status == b"200"
    assert identity.decode() == loop.store.identity().id
    assert location.decode().startswith("memory:")
    assert int(limit) == loop.store.max_request_bytes  # what a client may send
    assert extensions.split() == [b"titanic.batch", b"titanic.cancel", b"titanic.cancelled",
                                  b"titanic.follow", b"titanic.request.options",
                                  b"titanic.wait"]


def test_titanic_manage_is_answered_from_a_thread_of_its_own(loop: Loop) -> None:
    loop.receive(b"M", b"", b"MDPC01", manage.SERVICE, *manage.build_request(
        manage.Command.DESCRIBE))
    answers: list[list[bytes]] = []

    def answered() -> bool:
        wake = loop.turn(0.0)
        answers.extend(frames for frames in loop.broker.taken() if frames[0] == b"M")
        assert answers or wake <= loop.now + 0.01  # looked at again soon while worked on
        return bool(answers)

    wait_until(answered, timeout=5.0, interval=0.005, message="titanic.manage answered")
    status, _, payload = manage.parse_reply(answers[0][4:])
    assert status == 200
    assert payload["dispatcher"]["instance"] == loop.host.instance


def test_with_curve_a_request_belongs_to_the_key_that_sent_it() -> None:
    loop = Loop(DispatcherSettings(identities=True, reply_linger=0.0, forward_linger=0.0))
    try:
        request_id = loop.submit(b"mine", user=KEY)
        stored = loop.store.get(request_id)
        assert stored is not None and stored.owner == KEY.decode()
        # Another key is told what an unknown request would be; the owner is told it waits.
        assert loop.client(b"titanic.reply", request_id.encode(), client=b"D",
                           user=b"x" * 40) == [b"400", b"unknown"]
        assert loop.client(b"titanic.reply", request_id.encode(), user=KEY) == [
            b"300", b"pending"]
    finally:
        loop.close()


def test_finishing_stops_claiming_and_closing_releases_what_is_in_flight(loop: Loop) -> None:
    loop.ready()
    request_id = loop.submit(b"x")
    while not loop.forwards():
        loop.turn()
    assert loop.host.busy
    deadline = loop.host.finish(loop.now)
    assert deadline == pytest.approx(loop.now + SETTINGS.drain_timeout)
    second = loop.submit(b"y")  # still stored and answered while finishing
    loop.ready(b"W2")
    for _ in range(3):
        loop.turn()
    assert loop.forwards(b"W2") == []  # but not claimed
    loop.host.close()
    for stored_id, status in ((request_id, RequestStatus.PENDING),
                              (second, RequestStatus.PENDING)):
        stored = loop.store.get(stored_id)
        assert stored is not None and stored.status is status
    assert loop.host.stats.released == 1
