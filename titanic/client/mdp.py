"""Client APIs: a synchronous client with Lazy Pirate retries, and a pipelined one.

Both take one broker or several. With several, a request that gets no answer in time is sent
again to the next broker in the list, on a new socket, and the client stays with the broker that
answered: every broker is active, so failing over needs no coordination between them.

MDP replies carry no request id, and replies from several workers come back out of order, so the
pipelined client keeps a pool of sockets with one request in flight on each: a reply belongs to
the request on the socket it arrived on.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import NamedTuple

import zmq

from titanic._zmq import NOBLOCK, SocketHook, SocketSet, new_socket, recv_frames, send_frames
from titanic.client.answers import (
    DIAGNOSE_TIMEOUT_S,
    Unreachable,
    explain_timeout,
    unreachable_error,
    worker_gone,
)
from titanic.client.connect_watch import ConnectWatch
from titanic.errors import (
    BrokerRefusedError,
    ClientClosedError,
    EndpointError,
    ProtocolError,
    TitanicTimeoutError,
)
from titanic.protocol import mmi
from titanic.protocol.mdp import Dialect, Frames, build_client_request, parse_client_reply
from titanic.protocol.refusal import marked_routing_id, parse_refusal
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, broker_list

__all__ = ["DIAGNOSE_TIMEOUT_S", "Brokers", "Client", "Completion", "Connection", "Partial",
           "PipelinedClient", "collect_parts", "explain_timeout"]

Brokers = str | Sequence[str]


def _encode(service: str | bytes) -> bytes:
    return service.encode() if isinstance(service, str) else service


class Connection:
    """One DEALER socket to one of the brokers, replaced after a timeout (Lazy Pirate) by one to
    the next broker."""

    def __init__(self, brokers: Sequence[str], dialect: Dialect,
                 context: zmq.Context[zmq.Socket[bytes]], configure: SocketHook | None,
                 first: int = 0, *, watch: bool = False, others: bool = False) -> None:
        self.brokers = brokers
        self.dialect = dialect
        self._index = first % len(brokers)
        self._context = context
        self._configure = configure
        self._watching = watch
        #: Other brokers can answer instead (the client has several): a broker reached before
        #: that refuses connections is taken as down at once, not waited for as restarting.
        self.others = others or len(brokers) > 1
        #: With `watch`, the socket's connection events: a broker that cannot answer is told
        #: at once (titanic.client.connect_watch) instead of after the timeout.
        self.watch: ConnectWatch | None = None
        self._reached: set[str] = set()  # brokers this connection has been connected to
        self.socket = self._open()

    @property
    def broker(self) -> str:
        """The endpoint the socket is connected to."""
        return self.brokers[self._index]

    def _open(self) -> zmq.Socket[bytes]:
        sock = new_socket(self._context, zmq.DEALER)
        # Marked: titanic's broker then answers its refusals under an empty service name.
        sock.setsockopt(zmq.ROUTING_ID, marked_routing_id())
        if self._configure is not None:
            self._configure(sock)
        if self._watching:
            self.watch = ConnectWatch(sock, self.broker)
        try:
            sock.connect(self.broker)
        except zmq.ZMQError as exc:  # a socket left open would hang the context's term()
            self._close_socket(sock)
            raise EndpointError(f"cannot connect to {self.broker!r}: {exc.strerror}") from None
        return sock

    def reopen(self) -> zmq.Socket[bytes]:
        """Drop the socket and whatever is queued on it; connect a fresh one to the next
        broker (the same one when there is only one)."""
        self._close_socket(self.socket)
        self._index = (self._index + 1) % len(self.brokers)
        self.socket = self._open()
        return self.socket

    def _close_socket(self, sock: zmq.Socket[bytes]) -> None:
        if self.watch is not None:
            self.unreachable()  # notes whether the broker was reached
            self.watch.close()
            self.watch = None
        sock.close(linger=0)

    def unreachable(self, *, final: bool = False) -> Unreachable | None:
        """Why the broker cannot answer, as the socket's monitor tells at once: a refused
        handshake, or nothing listening, where no broker was ever reached or where another
        broker can answer instead (one reached before, with no other, is restarting: it is
        waited for, as a silent one is). None without a watch. `final`: the wait is over (see
        ConnectWatch.verdict)."""
        watch = self.watch
        if watch is None:
            return None
        verdict = watch.verdict(final=final)
        if watch.connected:
            self._reached.add(self.broker)
        if verdict is None or (not verdict.handshake and not self.others
                               and self.broker in self._reached):
            return None
        return verdict

    def send(self, service: bytes, body: Sequence[bytes], wait: float = 0.0) -> bool:
        """Send a REQUEST in this connection's dialect, waiting up to `wait` seconds for the
        socket to take it; False if it did not (no connection to the broker: a DEALER blocks
        for ever then, for example after the broker refused our CURVE key)."""
        frames = build_client_request(self.dialect, service, body)
        for last_try in (False, True):
            try:
                send_frames(self.socket, frames, NOBLOCK)
                return True
            except zmq.Again:
                if last_try or wait <= 0 or not self.socket.poll(int(wait * 1000) + 1,
                                                                   zmq.POLLOUT):
                    return False
        return False

    def read_part(self, service: bytes) -> tuple[bool, Frames] | BrokerRefusedError | None:
        """Read one waiting message: (final, body), the broker's refusal of the request, or
        None if there was none or it was not a reply for `service`."""
        try:
            frames = recv_frames(self.socket, NOBLOCK)
        except zmq.Again:
            return None
        try:
            reply = parse_client_reply(self.dialect, frames)
        except ProtocolError:
            return None
        if reply.service != service:
            if not reply.service and self.dialect is not Dialect.MAJORTOMO:
                return _refused(service, reply.body)  # no worker replies without a name
            if reply.service:
                return None  # a late reply to an earlier request
        return reply.final, reply.body

    def close(self) -> None:
        """Close the socket at once."""
        self._close_socket(self.socket)


def _wait_readable(connection: Connection, timeout: float) -> bool | Unreachable:
    """Wait up to `timeout` seconds for the connection's socket to be readable: True, False
    after the timeout, or why the broker cannot answer, as soon as its monitor tells."""
    sock = connection.socket
    watch = connection.watch
    if watch is None:
        return bool(sock.poll(int(timeout * 1000) + 1, zmq.POLLIN))
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(watch.monitor, zmq.POLLIN)
    while True:
        verdict = connection.unreachable()
        if verdict is not None:
            return verdict
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return connection.unreachable(final=True) or False
        if sock in dict(poller.poll(int(remaining * 1000) + 1)):
            return True


def collect_parts(connection: Connection, service: bytes, wait: float
                  ) -> list[Frames] | Unreachable | None:
    """The reply parts to the request just sent on `connection`, or None if none came within
    `wait` seconds (each part restarts the clock), or why the broker cannot answer (a
    watched connection); BrokerRefusedError if the broker refused the request."""
    parts: list[Frames] = []
    deadline = time.monotonic() + wait
    while True:
        remaining = deadline - time.monotonic()
        ready = _wait_readable(connection, remaining) if remaining > 0 else False
        if ready is False:
            return None
        if isinstance(ready, Unreachable):
            return ready
        result = connection.read_part(service)
        if result is None:
            continue
        if isinstance(result, BrokerRefusedError):
            raise result
        final, body = result
        parts.append(body)
        if final:
            return parts
        deadline = time.monotonic() + wait


def _refused(service: bytes, body: Frames) -> BrokerRefusedError | None:
    """The broker's refusal of a request for `service`; None if the body is not one."""
    try:
        refusal = parse_refusal(body)
    except ProtocolError:
        return None
    return BrokerRefusedError(refusal.code, refusal.reason, service.decode(errors="replace"))


def _where(brokers: Sequence[str]) -> str:
    return brokers[0] if len(brokers) == 1 else f"any of {', '.join(brokers)}"


class Client:
    """Synchronous client: `request()` waits for the reply, resending on a new socket on timeout
    (to the next broker, given several)."""

    def __init__(
        self,
        broker: Brokers,
        *,
        dialect: Dialect = Dialect.MDP01,
        timeout: float = CLIENT_TIMEOUT_S,
        retries: int = CLIENT_RETRIES,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        configure_socket: SocketHook | None = None,
    ) -> None:
        self.brokers = broker_list(broker)
        self.timeout = timeout
        self.retries = retries
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._connection: Connection | None = Connection(self.brokers, dialect, self._context,
                                                          configure_socket, watch=True)

    @property
    def broker(self) -> str:
        """The broker the next request goes to: the one that answered last."""
        return self._require_connection().broker

    def request(self, service: str | bytes, *frames: bytes, timeout: float | None = None,
                retries: int | None = None) -> Frames:
        """Send a request and return the reply body (all parts joined)."""
        return [frame for part in self.request_parts(service, *frames, timeout=timeout,
                                                     retries=retries) for frame in part]

    def request_parts(self, service: str | bytes, *frames: bytes, timeout: float | None = None,
                      retries: int | None = None) -> list[Frames]:
        """Send a request and return its reply parts (18/MDP PARTIALs, then the FINAL)."""
        connection = self._require_connection()
        name = _encode(service)
        wait = self.timeout if timeout is None else timeout
        attempts = 1 + (self.retries if retries is None else retries)
        unreachable: dict[str, Unreachable] = {}
        for attempt in range(attempts):
            if attempt:
                connection.reopen()
            began = time.monotonic()
            if connection.send(name, frames, wait):
                try:
                    parts = collect_parts(connection, name, wait - (time.monotonic() - began))
                except BrokerRefusedError as exc:
                    if not worker_gone(exc) or attempt == attempts - 1:
                        raise
                    continue  # as after a timeout, without waiting for it: sent again
                if isinstance(parts, Unreachable):
                    unreachable[connection.broker] = parts
                    continue
                if parts is not None:
                    return parts
            unreachable.pop(connection.broker, None)
        explanation = connection.watch.explanation() if connection.watch else None
        connection.reopen()  # a late reply to this request must not answer the next one
        if unreachable and len(unreachable) == len(set(self.brokers)):
            raise unreachable_error(unreachable.values())
        raise TitanicTimeoutError(
            f"no reply from service {name.decode(errors='replace')!r} at {_where(self.brokers)} "
            f"after {attempts} attempt(s) of {wait:g} s"
            + (f": {explanation}" if explanation else "")
        )

    def has_workers(self, service: str | bytes, timeout: float = DIAGNOSE_TIMEOUT_S
                    ) -> bool | None:
        """Whether the broker has workers for `service` now (mmi.service); None if the broker
        did not answer within `timeout` seconds."""
        try:
            answer = self.request(mmi.SERVICE, _encode(service), timeout=timeout, retries=0)
        except TitanicTimeoutError:
            return None
        return answer[:1] == [mmi.FOUND]

    def explain_timeout(self, service: str | bytes, timeout: float = DIAGNOSE_TIMEOUT_S) -> str:
        """Which piece is down after a request to `service` got no reply, asked of the broker."""
        return explain_timeout(service, self.broker, self.has_workers(service, timeout))

    def _require_connection(self) -> Connection:
        if self._connection is None:
            raise ClientClosedError()
        return self._connection

    def close(self) -> None:
        """Close the socket (linger 0) and, if the client made it, the context."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            if self._own_context:
                self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Completion(NamedTuple):
    """A finished pipelined request: the reply body (every part joined), or the error that
    ended it."""

    tag: Hashable
    reply: Frames | None
    error: Exception | None
    #: Where the FINAL's frames start in `reply`: after the frames of the PARTIALs before it.
    final_from: int = 0


class Partial(NamedTuple):
    """A part of a streamed reply (an 18/MDP PARTIAL) to a request still in flight: its tag,
    the part's number (from 1, per attempt) and its frames."""

    tag: Hashable
    seq: int
    body: Frames


class _Slot:
    __slots__ = (
        "attempts",
        "attempts_left",
        "body",
        "connection",
        "generation",
        "part_count",
        "parts",
        "service",
        "tag",
        "timeout",
    )

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.tag: Hashable = None
        self.service = b""
        self.body: Sequence[bytes] = ()
        self.generation = 0  # bumped at every new deadline: older heap entries are stale
        self.attempts_left = 0
        self.parts: Frames = []
        self.part_count = 0
        self.timeout = 0.0
        self.attempts = 0


class PipelinedClient:
    """Many requests in flight: a pool of up to `depth` sockets, one outstanding request on each,
    each opened when first needed (a dispatcher allowed hundreds in flight opens only as many as
    its load keeps busy).

    With several brokers the sockets are spread over them, and a socket whose request timed out
    is replaced by one to the next broker.

    `poll()` waits by itself. A caller with sockets of its own to watch (the dispatcher) passes a
    shared SocketSet, waits on it, and hands the ready sockets to `collect()`, then calls
    `expire()` for requests whose time ran out.

    With `stream_parts` (and an 18/MDP dialect), each PARTIAL that comes is also kept as a
    `Partial` for `take_partials()`, as it arrives; the Completion still joins every part.
    """

    def __init__(
        self,
        broker: Brokers,
        *,
        depth: int = 32,
        dialect: Dialect = Dialect.MDP01,
        timeout: float = CLIENT_TIMEOUT_S,
        retries: int = CLIENT_RETRIES,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        configure_socket: SocketHook | None = None,
        sockets: SocketSet | None = None,
        stream_parts: bool = False,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.brokers = broker_list(broker)
        self.timeout = timeout
        self.retries = retries
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._own_sockets = sockets is None
        self._sockets = sockets or SocketSet()
        self._by_socket: dict[zmq.Socket[bytes], _Slot] = {}
        self._free: list[_Slot] = []
        self._busy: set[_Slot] = set()
        # (deadline, sequence, generation, slot): a heap, as timeouts may differ per request.
        self._deadlines: list[tuple[float, int, int, _Slot]] = []
        self._sequence = 0
        self._depth = depth
        self._opened = 0
        self._dialect = dialect
        self._configure = configure_socket
        self._closed = False
        self._stream_parts = stream_parts
        self._partials: list[Partial] = []

    def take_partials(self) -> list[Partial]:
        """The PARTIALs that came since the last call, oldest first (with `stream_parts`)."""
        partials, self._partials = self._partials, []
        return partials

    def _take_slot(self) -> _Slot:
        """A free slot, the most recently used first, or a new one while fewer than `depth`."""
        if self._free:
            return self._free.pop()
        if self._opened >= self._depth:
            raise RuntimeError("no free slot: poll() for completions first")
        # Spread over the brokers; a slot whose request times out moves to the next one.
        slot = _Slot(Connection(self.brokers, self._dialect, self._context, self._configure,
                                 first=self._opened))
        self._opened += 1
        self._track(slot)
        return slot

    def _track(self, slot: _Slot) -> None:
        sock = slot.connection.socket
        self._by_socket[sock] = slot
        self._sockets.add(sock)

    @property
    def free_slots(self) -> int:
        """How many more requests can be sent before one completes."""
        return len(self._free) + self._depth - self._opened

    @property
    def in_flight(self) -> int:
        """How many requests await their reply."""
        return len(self._busy)

    @property
    def sockets_opened(self) -> int:
        """How many of its `depth` sockets it has opened so far (each when first needed)."""
        return self._opened

    def send(self, service: str | bytes, body: Sequence[bytes], tag: Hashable = None, *,
             timeout: float | None = None, retries: int | None = None) -> None:
        """Send a request on a free socket; `tag` comes back in its Completion.

        `timeout` and `retries` default to the client's.
        """
        if self._closed:
            raise ClientClosedError()
        slot = self._take_slot()
        slot.tag, slot.service, slot.body = tag, _encode(service), body
        slot.attempts_left = self.retries if retries is None else retries
        slot.attempts = slot.attempts_left + 1
        slot.timeout = self.timeout if timeout is None else timeout
        slot.parts = []
        slot.part_count = 0
        self._arm(slot, time.monotonic())
        # No touch() after this send: a free slot's socket has nothing to read (a timed-out
        # request's socket is replaced), so the send cannot swallow a reply's wake-up.
        slot.connection.send(slot.service, body)
        self._busy.add(slot)

    def _arm(self, slot: _Slot, now: float) -> None:
        """Start the slot's reply timer."""
        slot.generation += 1
        self._sequence += 1
        heapq.heappush(self._deadlines, (now + slot.timeout, self._sequence, slot.generation,
                                         slot))

    def next_deadline(self) -> float | None:
        """When the earliest request in flight times out (stale heap entries dropped)."""
        deadlines = self._deadlines
        while deadlines:
            _, _, generation, slot = deadlines[0]
            if slot in self._busy and slot.generation == generation:
                return deadlines[0][0]
            heapq.heappop(deadlines)
        return None

    def pending_tags(self) -> list[Hashable]:
        """The tags of requests still awaiting their reply."""
        return [slot.tag for slot in self._busy]

    def poll(self, timeout: float | None = None) -> list[Completion]:
        """Wait up to `timeout` seconds (None: until something completes) and return completions.

        With a shared SocketSet, returns early, possibly empty, when one of its plain descriptors
        becomes readable.
        """
        done: list[Completion] = []
        limit = None if timeout is None else time.monotonic() + timeout
        while not done:
            wake = self.next_deadline()
            if limit is not None:
                wake = limit if wake is None else min(wake, limit)
            if wake is None:
                break  # nothing in flight
            wait = None if wake is None else max(0.0, wake - time.monotonic())
            ready, woken = self._sockets.wait(wait)
            done += self.collect(ready)
            done += self.expire(time.monotonic())
            if woken or (limit is not None and time.monotonic() >= limit):
                break
        return done

    def collect(self, ready: Iterable[zmq.Socket[bytes]]) -> list[Completion]:
        """Read a message from each of `ready` that is this client's; the completed requests."""
        done: list[Completion] = []
        for sock in ready:
            slot = self._by_socket.get(sock)
            if slot is not None:
                self._read(slot, done)
        return done

    def _read(self, slot: _Slot, done: list[Completion]) -> None:
        """Read one message from a readable socket (more parts show up in the next wait)."""
        result = slot.connection.read_part(slot.service)
        if result is None or slot not in self._busy:
            return
        if isinstance(result, BrokerRefusedError):
            if worker_gone(result) and slot.attempts_left > 0:
                self._resend(slot, time.monotonic())  # as after a timeout, without its wait
            else:
                self._finish(slot, done, None, result)
            return
        final, body = result
        final_from = len(slot.parts)
        slot.parts.extend(body)
        if final:
            self._finish(slot, done, slot.parts, None, final_from)
        else:
            if self._stream_parts:
                slot.part_count += 1
                self._partials.append(Partial(slot.tag, slot.part_count, body))
            self._arm(slot, time.monotonic())  # each part restarts the clock

    def expire(self, now: float) -> list[Completion]:
        """Resend requests whose time ran out, on a new socket, or end them with a timeout."""
        done: list[Completion] = []
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            slot = heapq.heappop(self._deadlines)[3]
            if slot.attempts_left <= 0:
                error = TitanicTimeoutError(
                    f"no reply from service {slot.service.decode(errors='replace')!r} at "
                    f"{_where(self.brokers)} after {slot.attempts} attempt(s) of "
                    f"{slot.timeout:g} s")
                self._reopen(slot)  # a late reply must not answer the slot's next request
                self._finish(slot, done, None, error)
                continue
            self._resend(slot, now)
        return done

    def _resend(self, slot: _Slot, now: float) -> None:
        """Send the slot's request again, on a new socket, one attempt fewer left."""
        slot.attempts_left -= 1
        self._reopen(slot)
        slot.parts = []
        slot.part_count = 0
        self._arm(slot, now)
        slot.connection.send(slot.service, slot.body)

    def _reopen(self, slot: _Slot) -> None:
        """Replace the slot's socket, dropping whatever is queued on it."""
        self._sockets.remove(slot.connection.socket)
        del self._by_socket[slot.connection.socket]
        slot.connection.reopen()
        self._track(slot)

    def _finish(self, slot: _Slot, done: list[Completion], reply: Frames | None,
                error: Exception | None, final_from: int = 0) -> None:
        done.append(Completion(slot.tag, reply, error, final_from))
        self._busy.discard(slot)
        slot.body = ()
        slot.parts = []
        self._free.append(slot)

    def run(self, requests: Iterable[tuple[str | bytes, Sequence[bytes]]]) -> Iterator[Completion]:
        """Send every request, keeping all sockets busy; yield completions tagged by input index."""
        pending = enumerate(requests)
        exhausted = False
        while True:
            while self.free_slots and not exhausted:
                item = next(pending, None)
                if item is None:
                    exhausted = True
                    break
                index, (service, body) = item
                self.send(service, body, index)
            if not self._busy:
                return
            yield from self.poll()

    def request_many(self, requests: Iterable[tuple[str | bytes, Sequence[bytes]]]) -> list[Frames]:
        """Replies in input order; raises the first error once every request has finished."""
        replies: dict[int, Frames] = {}
        first_error: Exception | None = None
        for completion in self.run(requests):
            if completion.error is not None:
                first_error = first_error or completion.error
            else:
                assert completion.reply is not None and isinstance(completion.tag, int)
                replies[completion.tag] = completion.reply
        if first_error is not None:
            raise first_error
        return [replies[index] for index in range(len(replies))]

    def close(self) -> None:
        """Close every socket (linger 0) and, if the client made it, the context."""
        if self._closed:
            return
        self._closed = True
        for sock in list(self._by_socket):
            if not self._own_sockets:
                self._sockets.remove(sock)
            sock.close(linger=0)
        self._by_socket.clear()
        if self._own_sockets:
            self._sockets.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> PipelinedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
