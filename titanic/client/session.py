"""The Titanic client's conversations without I/O: what to ask which broker, and what it means.

`TitanicClient` (blocking) and `AsyncTitanicClient` (asyncio) drive the same conversations. Each
call is a generator that yields what to do next (`Ask` one broker, `Survey` several at once,
`Pause`) and is sent back what came of it: the answer's frames, or None when none came in time
(the adapter has then dropped that socket, so a late answer cannot meet a later question), or
an `Unreachable` as soon as the socket's monitor tells that the broker cannot answer (nothing
listens there, or it refused our CURVE key). An error the adapter meets (the broker's refusal
of a request) propagates to the caller. Retries, failover
between brokers, deadlines, and what each broker's Titanic server understands are decided here.

What serves Titanic at a broker is asked once (8/MMI), before the first submit sent there:
titanic's own server answers `titanic.store`, takes the keyed `titanic.request` (idempotent
submits) and names its store; a standard 9/TSP server (the guide's) is sent the plain form,
which it stores as given. Brokers whose servers name different stores stop a submit before it
stores anything. A server that lists the batch form (`titanic.batch`) among its extensions is
sent submit_many's requests in messages of many; another is sent them one by one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from titanic.client.answers import (
    CallBudget,
    Fetched,
    ReplyState,
    Unreachable,
    explain_timeout,
    parse_cancel,
    parse_fetch,
    parse_submitted,
    parse_submitted_many,
    unreachable_error,
)
from titanic.errors import (
    ProtocolError,
    RequestFailedError,
    RequestTooLargeError,
    StoreMismatchError,
    TitanicError,
    TitanicServiceError,
    TitanicTimeoutError,
    UnknownRequestError,
    UsageError,
)
from titanic.protocol import mmi, tsp
from titanic.protocol.mdp import Frames
from titanic.protocol.tsp import FollowPage, ServingStore, parse_store_answer

log = logging.getLogger("titanic.client")

T = TypeVar("T")

#: Once one broker has answered a survey, how much longer the others are waited for, in seconds.
SURVEY_GRACE_S = 0.1
#: How often the presence of a Titanic server is asked again while there is none, in seconds.
PRESENCE_POLL_S = 0.1
#: The longest titanic.wait a client asks the server to hold, in seconds.
HOLD_S = 5.0
#: How long a broker must serve titanic.request without titanic.store before its server is
#: taken for a standard one, in seconds: titanic's dispatcher registers its services one
#: connection at a time, so a client may ask between two of them.
STANDARD_SERVER_S = 0.3
#: The most requests submit_many puts in one message: each message is one transaction, which
#: must commit well within the client's timeout.
BATCH_MAX_ITEMS = 5000


@dataclass(frozen=True)
class Ask:
    """Send one request to broker `broker` (an index into the brokers) and wait up to
    `timeout` seconds for its answer: the frames, None, or Unreachable."""

    broker: int
    service: bytes
    body: Frames
    timeout: float


@dataclass(frozen=True)
class Survey:
    """Ask several brokers at once: {broker: frames, or None}. The adapter waits until every
    one has answered (or is unreachable) or `timeout` passes, and no longer than `grace` after
    the first answer."""

    asks: tuple[tuple[int, bytes, Frames], ...]
    timeout: float
    grace: float


@dataclass(frozen=True)
class Pause:
    """Wait `seconds` before going on."""

    seconds: float


Op = Ask | Survey | Pause
#: A conversation: yields Ops, is sent their results, returns its own.
Conversation = Generator[Op, Any, T]


@dataclass(frozen=True)
class Server:
    """What serves Titanic at a broker."""

    #: It takes the keyed titanic.request (titanic's own server), so submits are idempotent.
    keyed: bool
    #: The store it names (titanic's server), None for a standard server.
    store: ServingStore | None


def timeout_error(exc: TitanicTimeoutError, service: bytes, broker: str,
                  present: bool | None) -> TitanicTimeoutError:
    """The timeout of a TSP call, saying which piece is down."""
    why = explain_timeout(service, broker, present)
    if present is False:
        why += " (is titanic-dispatcher running?)"
    return TitanicTimeoutError(f"{exc}: {why}")


def _where(brokers: Sequence[str]) -> str:
    return brokers[0] if len(brokers) == 1 else f"any of {', '.join(brokers)}"


class Follower:
    """Where following one streamed reply stands, without I/O: the last part number seen (so
    that a question sent again after a reconnect resumes there, no part repeated or lost), the
    deadline, and whether it is done. The adapters ask `session.follow(frame, after, hold())`
    until `done`, handing each answer to `take()`."""

    def __init__(self, request_id: str, after: int, timeout: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.request_id = request_id
        self.after = after
        self.done = False
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout

    def hold(self) -> float:
        """How long the next question may be held; TitanicTimeoutError once time is up."""
        if self._deadline is None:
            return HOLD_S
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            raise TitanicTimeoutError(f"request {self.request_id} is not done: following it "
                                      f"stopped after part {self.after}")
        return min(HOLD_S, remaining)

    def take(self, page: FollowPage | Fetched) -> list[Frames]:
        """The new parts an answer brings, in order; UnknownRequestError or
        TitanicServiceError when the request is unknown, failed or expired."""
        if isinstance(page, Fetched):
            if page.state is ReplyState.UNKNOWN:
                raise UnknownRequestError(f"request {self.request_id} is unknown")
            if page.state in (ReplyState.FAILED, ReplyState.EXPIRED):
                raise RequestFailedError(f"request {self.request_id} is {page}")
            raise TitanicServiceError(f"request {self.request_id} is {page}")
        parts: list[Frames] = []
        for seq, frames in page.parts:
            if seq > self.after:
                self.after = seq
                parts.append(list(frames))
        self.done = page.done
        return parts


class TspSession:
    """A client's state across calls (the broker it uses, what serves at each) and its
    conversations; `clock` is only read, never waited on."""

    def __init__(self, brokers: Sequence[str], *, timeout: float, retries: int,
                 held_waits: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.brokers = list(brokers)
        self.timeout = timeout
        self.retries = retries
        self._clock = clock
        #: Whether wait() asks titanic.wait where the server has it (else it polls).
        self.held_waits = held_waits
        #: The broker the next call goes to: the one that answered last.
        self.current = 0
        self._servers: dict[int, Server] = {}  # forgotten when a broker does not answer
        self._stores: dict[int, ServingStore] = {}  # the last store each broker named
        self._surveyed = len(self.brokers) < 2
        self._warned: set[int] = set()

    @property
    def broker(self) -> str:
        """The endpoint the next call goes to."""
        return self.brokers[self.current]

    def server(self, broker: int) -> Server | None:
        """What serves Titanic at a broker, if known."""
        return self._servers.get(broker)

    # -- the conversations ----------------------------------------------------------------------

    def call(self, service: bytes, body: Frames, within: float | None = None
             ) -> Conversation[Frames]:
        """One TSP request with the client's retries and failover, in at most `within` seconds
        when given; a timeout says which piece is down."""
        budget = CallBudget.of(self.timeout, self.retries, within)
        unreachable: dict[int, Unreachable] = {}
        for _ in range(budget.retries + 1):
            index = self.current
            reply: Frames | Unreachable | None = yield Ask(index, service, body, budget.timeout)
            if isinstance(reply, list):
                return reply
            self._no_answer(index, reply, unreachable)
        raise (yield from self._timeout(service, budget, unreachable))

    def submit(self, service: bytes, frames: Frames, key: str | None,
               options: tsp.RequestOptions | None = None) -> Conversation[str]:
        """Store a request: its UUID. The key (a random one if None) goes on the wire only to a
        server that takes it, the same key on every resend; `options` (a delay, a priority)
        only to a server that names the options extension (UsageError for another, before
        anything is sent to it)."""
        key = uuid.uuid4().hex if key is None else key

        def body_for(server: Server, broker: str) -> Frames:
            _check_size(frames, server, broker)
            if options:
                _check_options(server, broker)
            return tsp.build_request(service, frames, key if server.keyed else None, options)

        reply = yield from self._request(body_for)
        assert reply is not None  # body_for always makes a body
        return parse_submitted(reply)

    def submit_many(self, service: bytes, bodies: Sequence[Frames],
                    keys: Sequence[str | None]) -> Conversation[list[str]]:
        """Store many requests for one service: their UUIDs in order. A server with the batch
        form is sent them in messages of many (within its max_request_bytes and
        BATCH_MAX_ITEMS each), every message stored whole or not at all; another server, one
        by one. Each request has its key (a random one for None) on every resend."""
        items = [tsp.BatchItem(tuple(frames), uuid.uuid4().hex if key is None else key)
                 for frames, key in zip(bodies, keys, strict=True)]
        ids: list[str] = []
        while len(ids) < len(items):
            batch = yield from self._submit_batch(service, items, len(ids))
            if batch is None:  # no batch form there: this one alone
                item = items[len(ids)]
                batch = [(yield from self.submit(service, list(item.frames), item.key))]
            ids.extend(batch)
        return ids

    def _submit_batch(self, service: bytes, items: Sequence[tsp.BatchItem], start: int
                      ) -> Conversation[list[str] | None]:
        """The UUIDs of the requests from items[start] that one batch message stored (as many
        as fit in one), with the client's retries and failover; None if the server reached
        takes no batches."""
        chunk: list[tsp.BatchItem] = []

        def body_for(server: Server, broker: str) -> Frames | None:
            if server.store is None or tsp.BATCH_FORM not in server.store.extensions:
                return None
            chunk[:] = _batch_chunk(items, start, server, broker)
            return tsp.build_batch(service, chunk)

        reply = yield from self._request(body_for)
        return None if reply is None else parse_submitted_many(reply, len(chunk))

    def _request(self, body_for: Callable[[Server, str], Frames | None]
                 ) -> Conversation[Frames | None]:
        """A titanic.request's answer, with the client's retries and failover: each server
        reached is vetted first (titanic.store), and `body_for(server, broker)` makes the body
        for it, or raises before anything is sent, or says None: this server takes no such
        request, and None is the answer."""
        budget = CallBudget.of(self.timeout, self.retries, None)
        if not self._surveyed:
            yield from self._survey(budget.timeout)
        unreachable: dict[int, Unreachable] = {}
        for _ in range(budget.retries + 1):
            index = self.current
            server: Server | Unreachable | None = self._servers.get(index)
            if server is None:
                server = yield from self._vet(index, budget.timeout)
            reply: Frames | Unreachable | None = server if not isinstance(server, Server) else None
            if isinstance(server, Server):
                body = body_for(server, self.brokers[index])
                if body is None:
                    return None
                reply = yield Ask(index, tsp.REQUEST_SERVICE, body, budget.timeout)
                if isinstance(reply, list):
                    return reply
            self._no_answer(index, reply, unreachable)
        raise (yield from self._timeout(tsp.REQUEST_SERVICE, budget, unreachable))

    def fetch(self, request_id: bytes, within: float | None = None) -> Conversation[Fetched]:
        """Ask once for a request's reply (with retries)."""
        return parse_fetch((yield from self.call(tsp.REPLY_SERVICE, [request_id], within)))

    def wait(self, request_id: bytes, timeout: float, *, interval: float = 0.1,
             interval_max: float = 1.0, progress: Callable[[float], None] | None = None
             ) -> Conversation[Fetched]:
        """The request's answer once it is no longer pending, or after `timeout` seconds.
        A server with `titanic.wait` holds the question until then (in turns of at most
        HOLD_S), and the answer comes as soon as the reply is stored; another is asked
        `titanic.reply` again after `interval` seconds, growing to `interval_max`."""
        started = self._clock()
        deadline = started + timeout
        while True:
            remaining = max(0.0, deadline - self._clock())
            fetched = yield from self._held_fetch(request_id, remaining)
            if fetched is None:
                fetched = yield from self.fetch(request_id, remaining)
                held = False
            else:
                held = True
            remaining = deadline - self._clock()
            if fetched.state is not ReplyState.PENDING or remaining <= 0:
                return fetched
            if progress is not None:
                progress(self._clock() - started)
            if not held:
                yield Pause(min(interval, remaining))
                interval = min(interval_max, interval * 1.5)

    def follow(self, request_id: bytes, after: int, hold: float
               ) -> Conversation[FollowPage | Fetched]:
        """One question about a streamed reply: its parts numbered after `after` and whether
        it is done, held by the server up to `hold` seconds (HOLD_S at most) while there is
        none; a Fetched instead when the request failed, expired or is unknown. A server
        without the follow form is asked titanic.wait (or polled), and its reply, once done, is
        one part. Sent again after a timeout, to this broker or the next (asking is
        idempotent: the caller's `after` says where it stands)."""
        hold = max(0.0, min(HOLD_S, hold))
        budget = CallBudget.of(self.timeout, self.retries, None)
        unreachable: dict[int, Unreachable] = {}
        for _ in range(budget.retries + 1):
            index = self.current
            server: Server | Unreachable | None = self._servers.get(index)
            if server is None:
                server = yield from self._vet(index, budget.timeout)
            reply: Frames | Unreachable | None = server if not isinstance(server, Server) else None
            if isinstance(server, Server):
                if server.store is None or tsp.FOLLOW_FORM not in server.store.extensions:
                    return (yield from self._follow_whole(request_id, after, hold))
                body = [request_id, b"%d" % int(hold * 1000), b"%d" % after]
                reply = yield Ask(index, tsp.WAIT_SERVICE, body, hold + budget.timeout)
                if isinstance(reply, list):
                    return _follow_page(reply)
            self._no_answer(index, reply, unreachable)
        raise (yield from self._timeout(tsp.WAIT_SERVICE, budget, unreachable))

    def _follow_whole(self, request_id: bytes, after: int, hold: float
                      ) -> Conversation[FollowPage | Fetched]:
        """follow() where the server has no follow form: the reply, once done, as part 1."""
        fetched = yield from self.wait(request_id, hold)
        if fetched.state is ReplyState.DONE:
            return FollowPage(True, [(1, tuple(fetched.reply))] if after < 1 else [])
        if fetched.state is ReplyState.PENDING:
            return FollowPage(False, [])
        return fetched

    def _held_fetch(self, request_id: bytes, remaining: float) -> Conversation[Fetched | None]:
        """titanic.wait, held up to `remaining` seconds (HOLD_S at most), where the current
        broker's server has it; None where it does not, or did not answer."""
        index = self.current
        server = self._servers.get(index)
        if not self.held_waits:
            return None
        if server is None:
            vetted = yield from self._vet(index, self.timeout, wait_for_server=False)
            server = vetted if isinstance(vetted, Server) else None
        if server is None or server.store is None or tsp.WAIT_SERVICE not in \
                server.store.extensions:
            return None
        hold = min(HOLD_S, remaining)
        body = [request_id, b"%d" % int(hold * 1000)]
        reply: Frames | Unreachable | None = yield Ask(index, tsp.WAIT_SERVICE, body,
                                                       hold + self.timeout)
        if not isinstance(reply, list):
            self._no_answer(index, reply)
            return None
        return parse_fetch(reply)

    def cancel(self, request_id: bytes) -> Conversation[str]:
        """Cancel a request: the state it was in (see titanic.cancel). UsageError where the
        server has no titanic.cancel, before anything is sent."""
        if not (yield from self._serves(tsp.CANCEL_SERVICE, self.timeout)):
            raise UsageError(f"the Titanic server at {self.broker} cannot cancel requests (a "
                             "standard 9/TSP server, or an older titanic)")
        return parse_cancel((yield from self.call(tsp.CANCEL_SERVICE, [request_id])))

    def is_cancelled(self, request_id: bytes, within: float) -> Conversation[bool]:
        """Whether a request was cancelled (False where the server cannot tell)."""
        if not (yield from self._serves(tsp.CANCELLED_SERVICE, within)):
            return False
        reply = yield from self.call(tsp.CANCELLED_SERVICE, [request_id], within)
        return reply[:2] == [tsp.Status.OK.frame(), b"yes"]

    def _serves(self, extension: bytes, timeout: float) -> Conversation[bool]:
        """Whether the current broker's Titanic server names this extension (asked once)."""
        index = self.current
        server: Server | Unreachable | None = self._servers.get(index)
        if server is None:
            server = yield from self._vet(index, timeout)
        return (isinstance(server, Server) and server.store is not None
                and extension in server.store.extensions)

    def has_workers(self, service: bytes, timeout: float) -> Conversation[bool | None]:
        """Whether the current broker has workers for `service` now (8/MMI); None if it did
        not answer in time."""
        index = self.current
        answer: Frames | Unreachable | None = yield Ask(index, mmi.SERVICE, [service], timeout)
        if not isinstance(answer, list):
            self._no_answer(index)
            return None
        return answer[:1] == [mmi.FOUND]

    # -- what serves at each broker -------------------------------------------------------------

    def _survey(self, timeout: float) -> Conversation[None]:
        """Before the first submit, ask every broker at once which store serves there, so that
        brokers on different stores are found before anything is stored."""
        self._surveyed = True
        everyone = range(len(self.brokers))
        present = yield Survey(tuple((i, mmi.SERVICE, [tsp.STORE_SERVICE]) for i in everyone),
                               timeout, SURVEY_GRACE_S)
        titanic = [i for i in everyone if _found(present.get(i))]
        if not titanic:
            return
        stores = yield Survey(tuple((i, tsp.STORE_SERVICE, [b""]) for i in titanic), timeout,
                              SURVEY_GRACE_S)
        for index in titanic:
            answer = stores.get(index)
            if isinstance(answer, list):
                self._learn(index, Server(True, _store_or_none(answer)))

    def _vet(self, index: int, timeout: float, *, wait_for_server: bool = True
             ) -> Conversation[Server | Unreachable | None]:
        """Ask broker `index` what serves Titanic there; None (or Unreachable) if it does not
        answer, or no server appears there within `timeout` (or at once, without
        `wait_for_server`)."""
        deadline = self._clock() + timeout
        while True:
            remaining = max(0.001, deadline - self._clock())
            answer: Frames | Unreachable | None = yield Ask(index, mmi.SERVICE,
                                                            [tsp.STORE_SERVICE], remaining)
            if not isinstance(answer, list):
                return answer
            if _found(answer):
                store: Frames | Unreachable | None = yield Ask(index, tsp.STORE_SERVICE, [b""],
                                                               remaining)
                if not isinstance(store, list):
                    return store
                return self._learn(index, Server(True, _store_or_none(store)))
            plain: Frames | Unreachable | None = yield Ask(index, mmi.SERVICE,
                                                           [tsp.REQUEST_SERVICE], remaining)
            if not isinstance(plain, list):
                return plain
            if _found(plain):
                # titanic.request without titanic.store: a standard server, unless titanic's
                # is registering its services one by one just now: asked again for a while.
                standard = yield from self._still_without_store(index, remaining)
                if standard is None:
                    continue
                if not standard:
                    return None
                return self._learn(index, Server(False, None))
            if not wait_for_server or self._clock() >= deadline:
                return None
            yield Pause(min(PRESENCE_POLL_S, deadline - self._clock()))

    def _still_without_store(self, index: int, timeout: float) -> Conversation[bool | None]:
        """Whether `titanic.store` stays unserved at broker `index` for STANDARD_SERVER_S
        (True), appears (None), or the broker stops answering (False)."""
        for _ in range(round(STANDARD_SERVER_S / PRESENCE_POLL_S)):
            yield Pause(PRESENCE_POLL_S)
            again: Frames | Unreachable | None = yield Ask(index, mmi.SERVICE,
                                                           [tsp.STORE_SERVICE], timeout)
            if not isinstance(again, list):
                return False
            if _found(again):
                return None
        return True

    def _learn(self, index: int, server: Server) -> Server:
        """Keep what serves at a broker; StoreMismatchError if its store is not the one that
        serves at another of the client's brokers."""
        if server.store is not None:
            self._stores[index] = server.store
            for other, known in self._stores.items():
                if known.id != server.store.id:
                    raise StoreMismatchError(
                        f"brokers {self.brokers[other]} and {self.brokers[index]} serve "
                        f"different stores ({known.location} and {server.store.location}): "
                        "a client's brokers must share one store")
        if not server.keyed and index not in self._warned:
            self._warned.add(index)
            log.warning("the Titanic server at %s takes no idempotency keys (a standard 9/TSP "
                        "server): a submit resent after a lost answer may be stored twice",
                        self.brokers[index])
        self._servers[index] = server
        return server

    def _no_answer(self, index: int, why: object = None,
                   unreachable: dict[int, Unreachable] | None = None) -> None:
        """Broker `index` did not answer (`why` is an Unreachable when its socket told why):
        forget what served there, note why in `unreachable`, move to the next broker."""
        self._servers.pop(index, None)
        if unreachable is not None:
            if isinstance(why, Unreachable):
                unreachable[index] = why
            else:
                unreachable.pop(index, None)
        if self.current == index:
            self.current = (index + 1) % len(self.brokers)

    def _timeout(self, service: bytes, budget: CallBudget,
                 unreachable: dict[int, Unreachable]) -> Conversation[TitanicError]:
        """The error for a call whose attempts all failed, saying which piece is down: no
        broker reachable, or a timeout with what the broker says of the service."""
        if len(unreachable) == len(self.brokers):
            return unreachable_error(unreachable.values())
        attempts = budget.retries + 1
        error = TitanicTimeoutError(
            f"no reply from service {service.decode(errors='replace')!r} at "
            f"{_where(self.brokers)} after {attempts} attempt(s) of {budget.timeout:g} s")
        present = yield from self.has_workers(service, budget.probe)
        return timeout_error(error, service, self.broker, present)


def _check_size(frames: Sequence[bytes], server: Server, broker: str) -> None:
    """RequestTooLargeError, before anything is sent, for a request body over the largest
    the server at `broker` says it stores."""
    limit = server.store.max_request_bytes if server.store is not None else None
    size = sum(map(len, frames))
    if limit is not None and size > limit:
        raise RequestTooLargeError(
            f"the request body is {size:,} bytes, over the {limit:,} bytes that the Titanic "
            f"server at {broker} stores (its --max-request-size)")


def _batch_chunk(items: Sequence[tsp.BatchItem], start: int, server: Server, broker: str
                 ) -> list[tsp.BatchItem]:
    """The requests from items[start] that go in one batch message: at most BATCH_MAX_ITEMS,
    their bodies together within the server's max_request_bytes (RequestTooLargeError for a
    request over it alone)."""
    limit = server.store.max_request_bytes if server.store is not None else None
    chunk: list[tsp.BatchItem] = []
    size = 0
    for item in items[start:start + BATCH_MAX_ITEMS]:
        _check_size(item.frames, server, broker)
        size += sum(map(len, item.frames))
        if chunk and limit is not None and size > limit:
            break
        chunk.append(item)
    return chunk


def _follow_page(reply: Frames) -> FollowPage | Fetched:
    """A follow answer: the page of parts, or (not a 200) where the request stands."""
    if reply and reply[0][:3] == b"200":
        return tsp.parse_follow_answer(reply)
    fetched = parse_fetch(reply)
    return FollowPage(False, []) if fetched.state is ReplyState.PENDING else fetched


def _check_options(server: Server, broker: str) -> None:
    """UsageError, before anything is sent, when the server at `broker` takes no options (a
    standard 9/TSP server, or an older titanic): it would not honour them."""
    if server.store is None or tsp.OPTIONS_EXTENSION not in server.store.extensions:
        raise UsageError(f"the Titanic server at {broker} takes no delay or priority (a "
                         "standard 9/TSP server, or an older titanic): submit without them")


def _found(answer: Frames | Unreachable | None) -> bool:
    """Whether an mmi.service answer says the service is there."""
    return isinstance(answer, list) and answer[:1] == [mmi.FOUND]


def _store_or_none(answer: Frames) -> ServingStore | None:
    try:
        return parse_store_answer(answer)
    except ProtocolError:
        return None
