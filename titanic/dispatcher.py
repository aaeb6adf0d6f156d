"""The titanic dispatcher: serves the TSP services and forwards stored requests to their workers.

One loop, one thread. It waits on every socket at once (one SocketSet): the TSP connections of
its WorkerPool, which answer titanic.request / .reply / .close and store the titanic.requests
that arrived together in one transaction, and the sockets of its PipelinedClient, which carries
stored requests to their services through the broker with many in flight. Each turn it answers
what the TSP connections brought, stores the replies that came back, and claims and sends more
due requests, each claim with a lease. Leases make crashes safe: a request whose dispatcher
died goes back to pending when its lease runs out, and is sent again, so delivery is at least
once. A single thread means no lock or interpreter-lock contention between serving and
forwarding, which showed as half the latency of a synchronous titanic.request.

Given several brokers, the TSP connections register with every one of them, and the forwarding
sockets are spread over them: a socket whose request timed out (its broker may be dead) moves to
the next broker, and the request goes back to the store to be sent again (at least once). Before
it registers, the dispatcher checks that no dispatcher on another store serves these brokers
(titanic.store_identity).

With `identities` (CURVE), the TSP connections ask the broker who sends each request: a stored
request belongs to the key that submitted it (see titanic.services), and `max_stored_per_key`
bounds how many unfinished requests one key may have stored.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, cast

import zmq

from titanic import __version__
from titanic._zmq import SocketHook, SocketSet, Waker
from titanic.client import Completion, PipelinedClient
from titanic.errors import StoreError
from titanic.logs import about
from titanic.management import ManagementService, process_facts
from titanic.protocol import manage, mmi, tsp
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Dialect, Frames
from titanic.services import (
    acknowledge,
    batch_of,
    check_requests,
    handle_close,
    handle_reply,
    refuse_for_store_error,
    refuse_over_owner_limit,
)
from titanic.settings import DEFAULT_BROKER, broker_list
from titanic.store import Delivery, Exchange, NewRequest, RequestStatus, Store, StoreIdentity
from titanic.store_identity import check_store_identity, store_reply
from titanic.worker_connection import ConnectionSettings
from titanic.worker_pool import PoolRequest, WorkerPool

log = logging.getLogger(__name__)

DAY_S = 24 * 3600.0


@dataclass(frozen=True)
class DispatcherSettings:
    """How the dispatcher behaves; every time is in seconds."""

    #: One broker, or several (a sequence, or one comma-separated string).
    broker: str | Sequence[str] = DEFAULT_BROKER
    #: The brokers' worker endpoints, when they have separate ones (`titanic broker
    #: --worker-bind`): the TSP services register there; requests are forwarded through `broker`.
    worker_broker: str | Sequence[str] | None = None
    dialect: Dialect = Dialect.MDP01
    #: How long a forwarded request may take before it counts as failed and is retried.
    request_timeout: float = 10.0
    max_attempts: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    max_in_flight: int = 64
    max_in_flight_per_service: int = 32
    #: Extra lease time beyond request_timeout, so a live dispatcher's lease never runs out first.
    lease_margin: float = 5.0
    #: How often to ask mmi.service again about a service that had no workers.
    presence_interval: float = 1.0
    #: How long a positive mmi.service answer is trusted.
    presence_ttl: float = 5.0
    #: How often expired leases are released (crash recovery).
    release_interval: float = 2.0
    #: How often undeliverable requests are expired and old ones purged.
    cleanup_interval: float = 60.0
    #: A request not delivered within this time after it was submitted expires.
    pending_ttl: float = DAY_S
    #: A finished request (and its reply) is deleted this long after it finished.
    reply_ttl: float = 7 * DAY_S
    request_connections: int = 16
    reply_connections: int = 2
    close_connections: int = 1
    #: On SIGTERM, how long to wait for replies to requests in flight before releasing them.
    drain_timeout: float = 5.0
    #: At start-up, how long to wait for each broker to say which store serves it.
    identity_timeout: float = 2.0
    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    #: Ask the broker who sends each TSP request (needs CURVE, and our key in the broker's
    #: admin folder): requests then belong to the key that submitted them.
    identities: bool = False
    #: Unfinished (pending or dispatched) requests one key may have stored; beyond, titanic.request
    #: is answered 503. 0: no limit. Only callers the broker names are counted.
    max_stored_per_key: int = 0

    @property
    def lease(self) -> float:
        """Seconds a claimed request stays ours."""
        return self.request_timeout + self.lease_margin


@dataclass
class DispatcherStats:
    """What the forwarder did."""

    dispatched: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    expired: int = 0
    purged: int = 0
    store_errors: int = 0
    #: titanic.requests refused with 503 for their key's max_stored_per_key.
    over_key_limit: int = 0


class _Presence:
    """Cached mmi.service answers (which services have workers now), asked without blocking."""

    def __init__(self, settings: DispatcherSettings) -> None:
        self._settings = settings
        self._known: dict[str, tuple[bool, float]] = {}
        self._asking: set[str] = set()

    def has_workers(self, service: str, now: float, client: PipelinedClient) -> bool:
        """The last answer while it is fresh; else ask again (the answer comes as a completion)
        and go on with the last answer meanwhile (none yet: no workers)."""
        present, checked = self._known.get(service, (False, -1e9))
        ttl = self._settings.presence_ttl if present else self._settings.presence_interval
        if now - checked >= ttl and service not in self._asking and client.free_slots:
            client.send(mmi.SERVICE, [service.encode()], (_MMI, service), timeout=1.0, retries=0)
            self._asking.add(service)
        return present

    def answer(self, service: str, reply: Frames | None, now: float) -> bool:
        """Record an mmi.service answer (None: the broker did not answer); True if present."""
        self._asking.discard(service)
        present = reply is not None and reply[:1] == [mmi.FOUND]
        if reply is None:
            log.warning("broker did not answer mmi.service for %r", service)
        self._known[service] = (present, now)
        return present

    def forget(self, service: str) -> None:
        """Ask again next time (a request to it timed out)."""
        self._known.pop(service, None)


#: Tag of an mmi.service question among the forwarded requests' completions.
_MMI = "mmi"


def _ignore(seconds: float) -> None:
    """A latency observer that keeps nothing (metrics not served)."""


class Dispatcher:
    """Serves TSP and forwards stored requests until stop(); see the module docstring."""

    def __init__(self, store: Store, settings: DispatcherSettings | None = None, *,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None) -> None:
        self.store = store
        self.settings = settings or DispatcherSettings()
        self.stats = DispatcherStats()
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._configure = configure_socket
        self._waker = Waker()
        self._sockets = SocketSet()  # every socket of the loop: TSP connections and the client
        self._in_flight: Counter[str] = Counter()
        self._candidates: set[str] = set()  # services that may have due requests
        self._next_survey = 0.0
        self._identity: StoreIdentity | None = None  # read at start-up, served as titanic.store
        self._running = False
        #: When the dispatcher was made (seconds since the epoch), for its uptime, and an id
        #: telling it from others on the same host and process.
        self.started = time.time()
        self.instance = uuid.uuid4().hex[:12]
        #: Told each store exchange's duration and each acknowledgement's latency, in seconds
        #: (titanic.metrics feeds its histograms from them).
        self.observe_store: Callable[[float], None] = _ignore
        self.observe_ack: Callable[[float], None] = _ignore
        self.management = ManagementService(store, self.describe,
                                            admin_only=self.settings.identities)
        self._warned_anonymous = False
        self.server = self._make_server()
        # titanic.manage on a thread and connection of its own: a dashboard's refresh or a
        # bulk purge scans the table, and must not hold up acknowledgements meanwhile.
        self._manage_pool = WorkerPool(
            self.settings.worker_broker or self.settings.broker,
            {manage.SERVICE: (1, self.management.handle_batch)}, dialect=self.settings.dialect,
            settings=self.settings.connection, context=self._context,
            configure_socket=self._configure, identities=self.settings.identities)

    def _make_server(self) -> WorkerPool:
        s = self.settings
        return WorkerPool(
            s.worker_broker or s.broker,
            {
                # titanic.request is served by the loop itself: see _turn().
                tsp.REQUEST_SERVICE: (s.request_connections, None),
                tsp.REPLY_SERVICE: (s.reply_connections, batch_of(handle_reply, self.store)),
                tsp.CLOSE_SERVICE: (s.close_connections, batch_of(handle_close, self.store)),
                tsp.STORE_SERVICE: (1, self._serve_identity),
            },
            dialect=s.dialect, settings=s.connection, context=self._context,
            configure_socket=self._configure, sockets=self._sockets, identities=s.identities,
        )

    def _serve_identity(self, bodies: Sequence[Frames],
                        callers: Sequence[Caller | None]) -> list[Frames]:
        assert self._identity is not None  # read before the server registers
        return [store_reply(self._identity) for _ in bodies]

    def _check_store(self) -> None:
        """Read the store's identity; StoreMismatchError if another store serves the brokers."""
        s = self.settings
        self._identity = self.store.identity()
        check_store_identity(self._identity, broker_list(s.broker), dialect=s.dialect,
                             timeout=s.identity_timeout, context=self._context,
                             configure_socket=self._configure)

    def stop(self) -> None:
        """Stop taking work, finish or release what is in flight, return from run()."""
        self._waker.wake()

    def run(self) -> None:
        """Serve and forward until stop(); StoreMismatchError (before serving anything) if
        another store serves the brokers."""
        s = self.settings
        client: PipelinedClient | None = None
        managing: threading.Thread | None = None
        try:
            self._check_store()
            client = PipelinedClient(s.broker, depth=s.max_in_flight, dialect=s.dialect,
                                     timeout=s.request_timeout, retries=0,
                                     context=self._context, configure_socket=self._configure,
                                     sockets=self._sockets)
            presence = _Presence(s)
            self._sockets.add_fd(self._waker.fileno())
            self.server.open(time.monotonic())
            log.info("dispatcher serving titanic.request/reply/close/manage on %s, forwarding "
                     "through %s, store %s", ", ".join(broker_list(s.worker_broker or s.broker)),
                     ", ".join(client.brokers), self._identity)
            managing = threading.Thread(target=self._manage_pool.run, name="titanic-manage",
                                        daemon=True)
            managing.start()
            self._running = True
            self._loop(client, presence)
            self._sockets.remove_fd(self._waker.fileno())
            self.server.close()  # no more TSP requests: the broker hands them to others
            self._drain(client, presence)
        finally:
            self._running = False
            if managing is not None:
                self._manage_pool.stop()
                managing.join(10.0)
            if client is not None:
                client.close()
            self.server.close()
            self._sockets.close()
            self._waker.close()
            if self._own_context:
                self._context.term()
            log.info("dispatcher stopped: %s", self.stats)

    def describe(self) -> dict[str, Any]:
        """Which dispatcher this is (version, host, pid, uptime) and its counters."""
        return {**process_facts(self.instance, __version__, self.started),
                "stats": asdict(self.stats)}

    def health(self) -> tuple[bool, str]:
        """Serving, and why not: running, every TSP service registered with a broker that
        answers, and the store reachable. Safe to call from another thread."""
        if not self._running:
            return False, "dispatcher not running"
        now = time.monotonic()
        down = self.server.services_down(now) + self._manage_pool.services_down(now)
        if down:
            names = ", ".join(service.decode() for service in down)
            return False, f"no live broker connection for {names}"
        try:
            self.store.next_due_at()
        except StoreError as exc:
            return False, f"store unreachable: {exc}"
        return True, "dispatcher serving"

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self, client: PipelinedClient, presence: _Presence) -> None:
        """Wait for anything, then one turn: answer TSP, store replies, claim and send more."""
        s = self.settings
        next_release = next_cleanup = 0.0
        more = True  # the first turn claims whatever is due
        while not self._waker.stopped.is_set():
            now = time.monotonic()
            if now >= next_release:
                self._guarded(self._release_stale)
                next_release = now + s.release_interval
            if now >= next_cleanup:
                self._guarded(self._cleanup)
                next_cleanup = now + s.cleanup_interval
            if now >= self._next_survey:
                # Retries come due, other processes store requests: look at the store itself.
                self._guarded(lambda: self._candidates.update(self.store.due_services()))
                self._next_survey = now + s.presence_interval
                more = True
            wake = min(next_release, next_cleanup, self._next_survey, self.server.upkeep(now))
            deadline = client.next_deadline()
            if deadline is not None:
                wake = min(wake, deadline)
            ready, _ = self._sockets.wait(0.0 if more else max(0.0, wake - time.monotonic()))
            now = time.monotonic()
            submits: list[PoolRequest] = []
            others: list[PoolRequest] = []
            for request in self.server.read(ready, now):
                (submits if request[0].service == tsp.REQUEST_SERVICE else others).append(request)
            if others:
                self.server.serve(others, now)
            completions = client.collect(ready) + client.expire(now)
            more = self._turn(submits, completions, client, presence, now, claim=True)

    def _guarded(self, action: Callable[[], object]) -> None:
        """Run a store action; a store error is logged and counted, and the loop goes on."""
        try:
            action()
        except StoreError as exc:
            self.stats.store_errors += 1
            log.error("store error: %s", exc)

    # -- one turn -------------------------------------------------------------------------------

    def _turn(self, submits: list[PoolRequest],
              completions: list[Completion], client: PipelinedClient, presence: _Presence,
              now: float, *, claim: bool) -> bool:
        """Store the new requests and the replies, and claim due requests, in one transaction;
        then acknowledge, send what was claimed, and reschedule what timed out. True if a
        service may have more due than was claimed (look again at once)."""
        accepted, answers = self._check(submits)
        new = [request for _, request in accepted]
        self._candidates.update(request.service for request in new)
        replies, failed = self._sort(completions, presence, now)
        plan = self._claim_plan(client, presence, now) if claim else {}
        more = False
        # With new requests to acknowledge, the claims wait for a second, fsync-free transaction
        # after the acknowledgements: a client waiting for its UUID should not wait for them.
        # A store error leaves the replies unstored: their leases send those requests again.
        result = self._exchange(new, replies, {} if new else plan)
        if isinstance(result, StoreError):
            refuse_for_store_error(answers, accepted, result)
        else:
            acknowledge(answers, accepted, result.ids)
            self.stats.completed += result.completed
        for (connection, address, _, _), answer in zip(submits, answers, strict=True):
            connection.reply(address, answer or [tsp.Status.ERROR.frame()], now=now)
        if submits:
            waited = time.monotonic() - now
            for _ in submits:
                self.observe_ack(waited)
        if new and plan and isinstance(result, Exchange):
            result = self._exchange([], [], plan)
        if isinstance(result, Exchange):
            claimed = Counter(delivery.service for delivery in result.claimed)
            for delivery in result.claimed:
                self._send(client, delivery)
            for service, room in plan.items():
                if claimed[service] < room:
                    self._candidates.discard(service)  # nothing more due there for now
                else:
                    more = True
        for request_id, service in failed:
            self._guarded(partial(self._retry, request_id, service))
        return more

    def _check(self, submits: list[PoolRequest]
               ) -> tuple[list[tuple[int, NewRequest]], list[Frames | None]]:
        """The titanic.requests to store, owned by their callers, and the answers of those
        refused (malformed, or over their key's limit)."""
        callers = [caller for _, _, _, caller in submits]
        if self.settings.identities and not self._warned_anonymous and None in callers:
            self._warned_anonymous = True
            log.warning("the broker named no caller for a titanic.request: it is stored without "
                        "an owner, for anyone to fetch (is the broker using CURVE?)")
        accepted, answers = check_requests([body for _, _, body, _ in submits],
                                           self.store.max_request_bytes, callers)
        limit = self.settings.max_stored_per_key
        owners = [request.owner for _, request in accepted if request.owner is not None]
        if not limit or not owners:
            return accepted, answers
        try:
            stored = self.store.unfinished_by_owner(owners)
        except StoreError as exc:
            self.stats.store_errors += 1
            refuse_for_store_error(answers, accepted, exc)
            return [], answers
        kept = refuse_over_owner_limit(answers, accepted, stored, limit)
        self.stats.over_key_limit += len(accepted) - len(kept)
        return kept, answers

    def _exchange(self, new: list[NewRequest], replies: list[tuple[str, Frames]],
                  plan: dict[str, int]) -> Exchange | StoreError:
        """Store.exchange, or the error (counted) if the store failed."""
        started = time.monotonic()
        try:
            return self.store.exchange(new, replies, plan, self.settings.lease)
        except StoreError as exc:
            self.stats.store_errors += 1
            if not new:  # with new requests the refusal's answer logs it
                log.error("store error: %s", exc)
            return exc
        finally:
            if new or replies or plan:
                self.observe_store(time.monotonic() - started)

    def _sort(self, completions: list[Completion], presence: _Presence,
              now: float) -> tuple[list[tuple[str, Frames]], list[tuple[str, str]]]:
        """Replies to store and requests that timed out; mmi.service answers taken note of."""
        replies: list[tuple[str, Frames]] = []
        failed: list[tuple[str, str]] = []
        for completion in completions:
            first, service = cast(tuple[str, str], completion.tag)
            if first == _MMI:
                if presence.answer(service, completion.reply, now):
                    self._candidates.add(service)
                continue
            self._in_flight[service] -= 1
            if completion.reply is not None:
                replies.append((first, completion.reply))
                log.debug("request %s answered", first, extra=about(first, service))
            else:
                presence.forget(service)
                failed.append((first, service))
        return replies, failed

    def _claim_plan(self, client: PipelinedClient, presence: _Presence,
                    now: float) -> dict[str, int]:
        """How many due requests to claim per service: what in-flight room allows, for the
        services that may have due requests and have workers (asking mmi.service if stale)."""
        s = self.settings
        plan: dict[str, int] = {}
        planned = 0
        for service in list(self._candidates):
            if self._in_flight[service] >= s.max_in_flight_per_service:
                continue
            if not presence.has_workers(service, now, client):
                continue  # looked at again when mmi answers, or at the next survey
            # Asked after has_workers(), which may have taken a slot for an mmi question.
            room = min(client.free_slots - planned,
                       s.max_in_flight_per_service - self._in_flight[service])
            if room > 0:
                plan[service] = room
                planned += room
        return plan

    def _send(self, client: PipelinedClient, delivery: Delivery) -> None:
        client.send(delivery.service, delivery.request, (delivery.id, delivery.service))
        self._in_flight[delivery.service] += 1
        self.stats.dispatched += 1
        log.debug("request %s sent to %r (attempt %d)", delivery.id, delivery.service,
                  delivery.attempts, extra=about(delivery.id, delivery.service))

    def _retry(self, request_id: str, service: str) -> None:
        s = self.settings
        error = f"no reply from {service!r} within {s.request_timeout:g} s"
        status = self.store.retry_later(request_id, error, max_attempts=s.max_attempts,
                                        backoff=s.backoff, backoff_max=s.backoff_max)
        if status is RequestStatus.FAILED:
            self.stats.failed += 1
            log.warning("request %s failed for good: %s", request_id, error,
                        extra=about(request_id, service))
        elif status is RequestStatus.PENDING:
            self.stats.retried += 1
            log.info("request %s will be retried: %s", request_id, error,
                     extra=about(request_id, service))

    def _drain(self, client: PipelinedClient, presence: _Presence) -> None:
        """At shutdown: wait a while for replies in flight, then hand the rest back."""
        deadline = time.monotonic() + self.settings.drain_timeout
        while client.in_flight and time.monotonic() < deadline:
            completions = client.poll(max(0.0, deadline - time.monotonic()))
            self._turn([], completions, client, presence, time.monotonic(), claim=False)
        for tag in client.pending_tags():
            first, _service = cast(tuple[str, str], tag)
            if first != _MMI:
                self._guarded(partial(self._release, first))

    def _release(self, request_id: str) -> None:
        if self.store.release(request_id):
            self.stats.released += 1
            log.info("request %s released at shutdown", request_id, extra=about(request_id))

    # -- housekeeping ---------------------------------------------------------------------------

    def _release_stale(self) -> None:
        released = self.store.release_stale()
        if released:
            self.stats.released += released
            log.warning("%d request(s) whose lease ran out are pending again", released)

    def _cleanup(self) -> None:
        expired = self.store.expire(pending_ttl=self.settings.pending_ttl)
        purged = self.store.purge(reply_ttl=self.settings.reply_ttl)
        self.stats.expired += expired
        self.stats.purged += purged
        if expired or purged:
            log.info("expired %d undelivered request(s), purged %d finished", expired, purged)
