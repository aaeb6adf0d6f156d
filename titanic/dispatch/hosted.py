"""Titanic inside the broker: the dispatcher's turns run in the broker's own loop.

`titanic broker --db URL` hosts a `HostedDispatcher`. The broker keeps the requests for the TSP
services aside instead of routing them (titanic.broker.core's local services), and after every
batch of messages the host takes them: titanic.request goes into the planner's turn (stored,
in one transaction with the turn's replies and claims, and answered), titanic.reply,
titanic.close and titanic.store are answered from the store, and titanic.manage is answered on
a thread of its own, since its scans must not hold up the loop. What the planner claims enters
the broker's routing as a request from a client without a socket (`CoreTransport`), and its
worker's reply comes back the same way.

Against a dispatcher of its own process, a submission skips the hop from the broker to the
dispatcher and back, and a forwarded request the two hops between the dispatcher's client
sockets and the broker: fewer messages, system calls and wake-ups per request, and one process
less. What it trades: the broker's routing waits while a turn commits, and the broker and the
dispatcher fail together. Several such brokers share one PostgreSQL database as several
dispatchers do (each forwards to the workers registered with it); an external dispatcher may
still serve at a hosting broker, forwarding through it.

With CURVE the broker knows each client's key itself, so a stored request belongs to the key
that submitted it without the identity extension.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

from titanic.broker.core import BrokerCore, Outgoing
from titanic.broker.local import LocalReply, LocalRequest
from titanic.client.mdp import Completion, Partial
from titanic.dispatch.held_waits import WaitDesk
from titanic.dispatch.peer_link import Capacity
from titanic.dispatch.planner import Planner
from titanic.dispatch.schedule import TurnSchedule
from titanic.dispatch.services import (
    handle_cancel,
    handle_cancelled,
    handle_close,
    handle_reply,
)
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import DispatcherBase
from titanic.dispatch.store_identity import store_reply
from titanic.errors import BrokerRefusedError, StoreError, TitanicError, TitanicTimeoutError
from titanic.protocol import manage, peer, tsp
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Frames
from titanic.protocol.refusal import Refusal
from titanic.store import Store, StoreIdentity

if TYPE_CHECKING:
    from titanic.broker.server import Broker

log = logging.getLogger("titanic.dispatcher")

#: How often the loop looks for titanic.manage answers while one is being worked on, seconds.
_MANAGE_POLL_S = 0.005
_SERVICES = frozenset({tsp.REQUEST_SERVICE, tsp.REPLY_SERVICE, tsp.CLOSE_SERVICE,
                       tsp.WAIT_SERVICE, tsp.STORE_SERVICE, tsp.CANCEL_SERVICE,
                       tsp.CANCELLED_SERVICE, manage.SERVICE,
                       peer.SERVICE, peer.REPLIES_SERVICE})


class CoreTransport:
    """The planner's transport inside the broker: each request enters the routing as one from
    a client of the broker's own (`BrokerCore.request_local`), completed by its reply, by the
    broker's refusal (a full queue: no reply, as after a timeout) or by its timeout."""

    def __init__(self, core: BrokerCore, send: Callable[[list[Outgoing]], None], *,
                 depth: int, timeout: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._core = core
        self._send = send
        self._clock = clock
        self._depth = depth
        self._timeout = timeout
        #: Requests awaiting their reply, by address: (tag, service, deadline).
        self._pending: dict[bytes, tuple[Hashable, bytes, float]] = {}
        # Per timeout, addresses in the order sent: their deadlines never decrease.
        self._deadlines: dict[float, dict[bytes, float]] = {}
        #: Replies that came after their request had timed out (it is tried again).
        self.late = 0
        #: Per request streaming its reply: how many PARTIALs came, and their frames.
        self._parts: dict[bytes, tuple[int, int]] = {}

    @property
    def free_slots(self) -> int:
        """How many more requests can be sent before one completes."""
        return self._depth - len(self._pending)

    @property
    def in_flight(self) -> int:
        """Requests sent and not completed."""
        return len(self._pending)

    def send(self, service: str | bytes, body: Sequence[bytes], tag: Hashable = None, *,
             timeout: float | None = None, retries: int | None = None) -> None:
        """Route a request now; its Completion carries `tag` (`retries` is ignored: the
        planner retries from the store)."""
        if len(self._pending) >= self._depth:
            raise TitanicError("no free slot: wait for a request to complete")
        name = service.encode() if isinstance(service, str) else service
        now = self._clock()
        address, out = self._core.request_local(name, list(body), now)
        timeout = self._timeout if timeout is None else timeout
        deadline = now + timeout
        self._pending[address] = (tag, name, deadline)
        self._deadlines.setdefault(timeout, {})[address] = deadline
        self._send(out)

    def partials(self, parts: Sequence[tuple[bytes, Frames]]) -> list[Partial]:
        """The PARTIALs of streamed replies as `Partial`s of their requests, numbered; each
        restarts its request's timeout, as a PipelinedClient's does. A part of a request that
        timed out is dropped."""
        found: list[Partial] = []
        now = self._clock()
        for address, body in parts:
            entry = self._pending.get(address)
            if entry is None:
                continue
            count, frames = self._parts.get(address, (0, 0))
            self._parts[address] = (count + 1, frames + len(body))
            found.append(Partial(entry[0], count + 1, body))
            for timeout, addresses in self._deadlines.items():
                if addresses.pop(address, None) is not None:
                    addresses[address] = now + timeout  # at the end: still in deadline order
                    self._pending[address] = (entry[0], entry[1], now + timeout)
                    break
        return found

    def complete(self, replies: Sequence[LocalReply]) -> list[Completion]:
        """The completions of the requests these replies answer (a refusal completes with no
        reply); a reply to a request that timed out is counted and dropped."""
        done: list[Completion] = []
        for address, reply in replies:
            entry = self._pending.pop(address, None)
            if entry is None:
                self.late += 1
                continue
            tag, service, deadline = entry
            self._forget(address, deadline)
            _, final_from = self._parts.pop(address, (0, 0))
            if isinstance(reply, Refusal):
                done.append(Completion(tag, None, BrokerRefusedError(
                    reply.code, reply.reason, service.decode(errors="replace"))))
            else:
                done.append(Completion(tag, reply, None, final_from))
        return done

    def _forget(self, address: bytes, deadline: float) -> None:
        for addresses in self._deadlines.values():
            if addresses.pop(address, None) is not None:
                return

    def expire(self, now: float) -> list[Completion]:
        """The requests whose time ran out, completed without a reply; one still waiting in
        the broker's queue is taken out of it, so that no worker gets it after all."""
        done: list[Completion] = []
        for addresses in self._deadlines.values():
            while addresses:
                address, deadline = next(iter(addresses.items()))
                if deadline > now:
                    break
                del addresses[address]
                tag, service, _ = self._pending.pop(address)
                self._parts.pop(address, None)
                self._core.cancel_local(address, service)
                done.append(Completion(tag, None, TitanicTimeoutError(
                    f"no reply from {service!r} within its timeout")))
        return done

    def next_deadline(self) -> float | None:
        """When the next request times out (None: none in flight)."""
        firsts = [next(iter(addresses.values())) for addresses in self._deadlines.values()
                  if addresses]
        return min(firsts) if firsts else None

    def pending_tags(self) -> list[Hashable]:
        """The tags of the requests still awaiting a reply."""
        return [tag for tag, _, _ in self._pending.values()]


class HostedDispatcher(DispatcherBase):
    """The dispatcher as a `titanic.broker.server.BrokerHost`; see the module docstring."""

    def __init__(self, store: Store, settings: DispatcherSettings | None = None) -> None:
        super().__init__(store, settings)
        self._broker: Broker | None = None
        self._transport: CoreTransport | None = None
        self._identity: StoreIdentity | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._manage_in: queue.SimpleQueue[tuple[LocalRequest, Caller | None] | None] = (
            queue.SimpleQueue())
        self._manage_out: queue.SimpleQueue[tuple[LocalRequest, Frames]] = queue.SimpleQueue()
        self._manage_waiting = 0
        self._finishing = False
        self._schedule: TurnSchedule | None = None  # while serving
        self._now = 0.0  # the time of the turn running: what the transport's sends are timed by
        #: titanic.wait requests held until their request finishes, by a key of their own.
        self._waits = WaitDesk(store, self._answer_wait)
        self._waiting: dict[int, LocalRequest] = {}
        self._wait_keys = itertools.count()

    def _capacity(self) -> Capacity | None:
        """The broker's own table of live workers (safe from the links' thread)."""
        def counts() -> dict[str, tuple[int, int]] | None:
            broker = self._broker
            return None if broker is None else broker.core.service_counts()

        return counts

    @property
    def services(self) -> frozenset[bytes]:
        """The TSP services, titanic.store and titanic.manage."""
        return _SERVICES

    @property
    def busy(self) -> bool:
        """Forwarded requests (or mmi questions) still await their replies."""
        return self._transport is not None and self._transport.in_flight > 0

    # -- the broker's loop calls these ----------------------------------------------------------

    def start(self, broker: Broker, now: float) -> None:
        """Read the store's identity, start the titanic.manage and clean-up threads."""
        self._identity = self.store.identity()
        self._broker = broker
        self._now = now
        transport = self._transport = CoreTransport(
            broker.core, broker.send, depth=self.settings.max_in_flight,
            timeout=self.settings.request_timeout, clock=lambda: self._now)
        planner = self._new_planner(transport)
        self._schedule = TurnSchedule(planner, release_interval=self.settings.release_interval,
                                      presence_interval=self.settings.presence_interval)
        manager = threading.Thread(target=self._manage, name="titanic-manage", daemon=True)
        manager.start()
        self._threads = [manager, self._start_clean_up(planner, self._stopping)]
        self.peers.store_id = self._identity.id
        self.peers.start()  # it also closes what asking sites fetched
        self._running = True
        log.info("broker serving titanic.request/reply/close/manage itself, store %s",
                 self._identity)

    def turn(self, now: float) -> float:
        """Answer what came for the TSP services, store the replies that came back, claim and
        forward more; when to be called again at the latest."""
        broker, transport, planner = self._broker, self._transport, self._planner
        schedule = self._schedule
        assert broker is not None and transport is not None and planner is not None
        assert schedule is not None
        self._now = now
        schedule.run_due(now)
        requests, replies = broker.core.take_local()
        parts = broker.core.take_local_partials()
        partials = transport.partials(parts) if parts else []
        submits = self._serve_others(requests, now, planner) if requests else []
        completions = transport.complete(replies) if replies else []
        deadline = transport.next_deadline()
        if deadline is not None and deadline <= now:
            completions += transport.expire(now)
        if submits or completions or partials or schedule.turn_due(now):
            schedule.more = planner.turn(
                [request.body for request in submits], completions, now,
                callers=[self._caller(request) for request in submits] if submits else None,
                answer=lambda answers: self._answer(submits, answers, now),
                claim=not self._finishing, partials=partials) and not self._finishing
        if self._manage_waiting:
            self._send_managed()
        self._waits.settle(planner.take_finished(), now, planner.take_progressed())
        managed = now + _MANAGE_POLL_S if self._manage_waiting else None
        return schedule.wake(now, transport.next_deadline(), self._waits.next_wake(), managed)

    def finish(self, now: float) -> float | None:
        """Stop claiming; store the replies held back; go on for drain_timeout while replies
        to forwarded requests may come."""
        planner = self._planner
        if planner is None:
            return None
        self._finishing = True
        self._now = now
        planner.turn([], [], now, answer=lambda _: None, claim=False)
        self._waits.answer_all()
        return now + self.settings.drain_timeout

    def close(self) -> None:
        """Hand back the forwarded requests still unanswered; stop the threads."""
        self._running = False
        planner, transport = self._planner, self._transport
        if planner is not None and transport is not None:
            planner.release_unanswered(transport.pending_tags())
        self._stopping.set()
        self._manage_in.put(None)
        self.peers.stop()
        for thread in self._threads:
            thread.join(30.0)
        log.info("hosted dispatcher stopped: %s", self.stats)

    # -- inside a turn --------------------------------------------------------------------------

    def _serve_others(self, requests: list[LocalRequest], now: float,
                      planner: Planner) -> list[LocalRequest]:
        """Answer every request but the titanic.requests, which are returned for the turn."""
        submits: list[LocalRequest] = []
        others: list[LocalRequest] = []
        for request in requests:
            (submits if request.service == tsp.REQUEST_SERVICE else others).append(request)
        if not others:
            return submits
        planner.someone_waits(now)
        assert self._broker is not None
        core, out = self._broker.core, []
        for request in others:
            caller = self._caller(request)
            if request.service == manage.SERVICE:
                self._manage_waiting += 1
                self._manage_in.put((request, caller))
                continue
            if request.service == tsp.WAIT_SERVICE:
                key = next(self._wait_keys)
                self._waiting[key] = request
                self._waits.take(key, request.body, caller, now)
                continue
            if request.service == tsp.REPLY_SERVICE:
                answer = handle_reply(self.store, request.body, caller)
            elif request.service == tsp.CLOSE_SERVICE:
                answer = handle_close(self.store, request.body, caller)
            elif request.service == peer.SERVICE:
                answer = self.peers.answer(request.body, caller)
            elif request.service == peer.REPLIES_SERVICE:
                answer = self.peers.replies(request.body, caller)
            elif request.service == tsp.CANCEL_SERVICE:
                answer = handle_cancel(self.store, request.body, caller)
            elif request.service == tsp.CANCELLED_SERVICE:
                answer = handle_cancelled(self.store, request.body, caller)
            else:
                assert self._identity is not None
                answer = store_reply(self._identity, self.store.max_request_bytes)
            out += core.answer_local(request, answer)
        self._broker.send(out)
        return submits

    def _caller(self, request: LocalRequest) -> Caller | None:
        """Who sent the request, as CURVE authenticated it (None without CURVE)."""
        user = request.user
        if user is None or not self.settings.identities:
            return None
        assert self._broker is not None
        return Caller(user.decode("ascii", "replace"), admin=user in self._broker.core.admins)

    def _answer(self, submits: Sequence[LocalRequest], answers: Sequence[Frames],
                now: float) -> None:
        """Each titanic.request's answer, to its client."""
        assert self._broker is not None
        core, out = self._broker.core, []
        for request, answer in zip(submits, answers, strict=True):
            out += core.answer_local(request, answer)
        self._broker.send(out)
        waited = time.monotonic() - now
        for _ in submits:
            self.observe_ack(waited)

    def _answer_wait(self, key: Hashable, answer: Frames) -> None:
        """A titanic.wait's answer, to its client."""
        assert self._broker is not None and isinstance(key, int)
        request = self._waiting.pop(key)
        self._broker.send(self._broker.core.answer_local(request, answer))

    # -- titanic.manage, on its own thread -------------------------------------------------------

    def _manage(self) -> None:
        """Answer titanic.manage requests until close(): a dashboard's refresh or a bulk purge
        scans the table, and must not hold up the broker meanwhile."""
        while (item := self._manage_in.get()) is not None:
            request, caller = item
            try:
                answer = self.management.handle(request.body, caller)
            except StoreError as exc:  # handle() answers these itself; a last guard
                answer = tsp.Status.ERROR.answer(f"store error: {exc}")
            self._manage_out.put((request, answer))

    def _send_managed(self) -> None:
        assert self._broker is not None
        core, out = self._broker.core, []
        while True:
            try:
                request, answer = self._manage_out.get_nowait()
            except queue.Empty:
                break
            self._manage_waiting -= 1
            out += core.answer_local(request, answer)
        if out:
            self._broker.send(out)
