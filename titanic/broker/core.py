"""The broker's routing without sockets: frames and a time in, frames to send out.

`BrokerCore` holds every decision of the Majordomo broker (services, worker queues, credit,
heartbeats, expiry, limits, 8/MMI) and no socket, clock or poll loop: the caller hands it each
message with the endpoint it came from and the time, and sends what it returns. A send the
caller could not deliver to a worker comes back through `undeliverable()`, which removes that
worker and routes the request again. `titanic.broker.server.Broker` is the driver around it.

Clients and workers are answered in the dialect they spoke, and a request may cross versions: a
7/MDP client served by an 18/MDP worker gets one REPLY holding every PARTIAL and FINAL body frame.
Nothing a peer sends can raise: malformed messages are dropped and counted. A request over a limit
is refused at once with a status reply (titanic.broker.refusals). With CURVE a client is its
authenticated public key (ZAP's User-Id): its connections share one per-client limit, and a worker
whose own key is in the admin folder may ask, in its READY, to be told each request's caller
(titanic.protocol.identity): how the dispatcher learns who owns a request.

A broker may host services itself (`local_services`, titanic.broker.local): their requests
are kept for the host (`take_local()`), which answers them through `answer_local()`, and the
host's own requests (`request_local()`) are routed as a client's without a socket.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from typing import Any

from titanic.broker import refusals
from titanic.broker.local import LocalDesk, LocalReply, LocalRequest
from titanic.broker.queues import (
    Assignment,
    QueueBook,
    QueuedRequest,
    RegisteredWorker,
    ServiceQueue,
    queued_cost,
)
from titanic.broker.stats import BrokerStats, DropReport
from titanic.errors import ProtocolError
from titanic.logs import about, quoted_name
from titanic.protocol import mmi
from titanic.protocol.identity import IDENTITY_OPTION, IDENTITY_REFUSED, caller_frame
from titanic.protocol.mdp import (
    CLIENT_01,
    EMPTY,
    WORKER_01,
    ClientRequest,
    Command,
    Dialect,
    Frames,
    WorkerMessage,
    build_client_reply,
    build_worker,
    parse_peer_message,
    worker_command_prefix,
)
from titanic.protocol.refusal import MARK as MARKED_CLIENT
from titanic.protocol.refusal import parse_refusal
from titanic.settings import MAX_SERVICE_NAME_BYTES, BrokerSettings

#: How often a worker holding requests is checked to be still connected, in seconds.
PROBE_S = 0.1

log = logging.getLogger("titanic.broker")

class Endpoint(enum.Enum):
    """Which peers a broker socket serves."""

    SHARED = "clients and workers"
    CLIENTS = "clients"
    WORKERS = "workers"


#: A message to send: (on the worker socket?, frames with the peer's identity first, and for a
#: REQUEST to a worker its assignment, which `undeliverable()` needs if the send fails).
Outgoing = tuple[bool, Frames, "Assignment | None"]

# Enum members looked up as globals: `Endpoint.X` costs ~70 ns a time on CPython 3.11.
_SHARED, _CLIENTS, _WORKERS = Endpoint.SHARED, Endpoint.CLIENTS, Endpoint.WORKERS
_MDP01 = Dialect.MDP01
#: 7/MDP's REPLY (FINAL) command, and every dialect's REQUEST prefix, built once.
_FINAL_01 = worker_command_prefix(Dialect.MDP01, Command.FINAL)[-1]
_REQUEST_PREFIX = {dialect: worker_command_prefix(dialect, Command.REQUEST) for dialect in Dialect}


class BrokerCore:
    """The broker's decisions: each call takes the time and returns the messages to send.

    With separate endpoints (`receive(..., Endpoint.CLIENTS)` / `Endpoint.WORKERS`) a worker
    command on the client endpoint gets DISCONNECT and a client request on the worker endpoint
    is dropped; messages for workers are then marked for the worker socket.
    """

    def __init__(self, settings: BrokerSettings | None = None, *, trace: bool = False,
                 facts: Callable[[], dict[str, Any]] | None = None,
                 local_services: frozenset[bytes] = frozenset()) -> None:
        self.settings = settings or BrokerSettings()
        # What mmi.broker answers: the driver adds what only it knows (version, uptime).
        self._facts = facts or self.facts
        self._max_request_size = self.settings.max_request_size
        self._max_queued_bytes = self.settings.max_queued_bytes_per_client
        self.stats = BrokerStats()
        self._services: dict[bytes, ServiceQueue] = {}
        self._workers: dict[bytes, RegisteredWorker] = {}
        #: Every queued request's place in the counts (titanic.broker.queues.QueueBook).
        self.book = QueueBook()
        self._drops = DropReport(self.stats)
        #: Z85 keys of the admin folder: their workers may be told each request's caller.
        self.admins: frozenset[bytes] = frozenset()
        self._trace = trace
        self._now = 0.0
        self._out: list[Outgoing] = []
        self._local_services = local_services
        self._local = LocalDesk(local_services)
        self._local_prefix = self._local.prefix
        #: A worker was given a request since the last probe(): the driver probes from now.
        self.gave_requests = False

    # -- what the driver calls ------------------------------------------------------------------

    def receive(self, frames: Frames, endpoint: Endpoint, now: float,
                user: bytes | None = None) -> list[Outgoing]:
        """One message from a ROUTER socket (identity frame first) serving `endpoint`; `user`
        is the sender's authenticated CURVE key (Z85), None without CURVE."""
        self._now = now
        out: list[Outgoing] = []
        self._out = out
        self.stats.messages += 1
        # The two messages of every 7/MDP round trip, recognised without the general parser:
        # a client's request and a worker's reply to the client at the head of its queue.
        if len(frames) > 3 and not frames[1]:
            header = frames[2]
            if header == CLIENT_01:
                if frames[3] and endpoint is not _WORKERS:
                    self._on_client(frames[0], _MDP01, frames[3], frames[4:], user)
                    return out
            elif header == WORKER_01 and len(frames) > 5 and frames[3] == _FINAL_01:
                worker = self._workers.get(frames[0])
                if (worker is not None and not frames[5] and worker.outstanding
                        and worker.outstanding[0][0] == frames[4] and endpoint is not _CLIENTS):
                    worker.last_seen = now
                    self._on_reply(worker, True, frames[6:])
                    return out
        self._dispatch(frames, endpoint, user)
        return out

    def tick(self, now: float) -> list[Outgoing]:
        """Housekeeping, once per heartbeat interval: expiry, heartbeats, the drop report."""
        self._now = now
        out: list[Outgoing] = []
        self._out = out
        self._expire_workers()
        self._heartbeat_workers()
        self._expire_requests()
        self._drops.report(self.settings.heartbeat_interval)
        return out

    def probe(self, now: float) -> tuple[list[Outgoing], bool]:
        """Heartbeats for the workers holding requests, at most every PROBE_S each: a send that
        cannot be routed tells at once that the worker's connection closed (undeliverable()),
        and the clients of what it held hear so; and whether any worker holds requests now."""
        self._now = now
        out: list[Outgoing] = []
        self._out = out
        busy = self.gave_requests = False
        for worker in self._workers.values():
            if worker.outstanding:
                busy = True
                if now - worker.probed_at >= PROBE_S:
                    worker.probed_at = now
                    self._send_worker(worker.identity,
                                      build_worker(worker.dialect, Command.HEARTBEAT))
        return out, busy

    def undeliverable(self, failed: Sequence[Outgoing], now: float,
                      gone: Sequence[bytes] = ()) -> list[Outgoing]:
        """REQUESTs the driver could not send (peer gone, or its pipe full): their workers are
        removed as unreachable and the requests given to another worker or put back in front
        of their queue, in the order they were sent.

        `gone`: the peer of every message (of any kind) that could not be routed because the
        peer's connection is gone. A worker among them is removed now, in one log line, rather
        than sent heartbeats until it expires (a busy one only after --busy-timeout); those
        drops stay counted as unroutable but that line tells them, not the drop report."""
        self._now = now
        out: list[Outgoing] = []
        self._out = out
        retry: list[tuple[ServiceQueue, QueuedRequest]] = []
        unreachable: dict[bytes, RegisteredWorker] = {}
        for _, frames, assignment in failed:
            worker = self._workers.get(frames[0])
            if assignment is None:
                continue
            if worker is None:
                self.stats.abandoned_requests += 1
                continue
            worker.outstanding.remove(assignment)
            unreachable[worker.identity] = worker
            client, dialect, _, counted, user = assignment
            caller = 1 if worker.identities and user is not None else 0
            body = frames[len(_REQUEST_PREFIX[worker.dialect]) + 3 + caller:]
            retry.append((worker.service, QueuedRequest(
                client, dialect, body, now + self.settings.request_ttl, counted, user,
                queued_cost(worker.service.name, body))))
        closed = set(gone)
        for identity in closed:
            worker = self._workers.get(identity)
            if worker is not None:
                unreachable[identity] = worker
        for identity, worker in unreachable.items():
            if identity in closed:
                self.stats.workers_gone += 1
                self._remove_worker(worker, "its connection closed")
            else:
                self._remove_worker(worker, "unreachable")
        self._drops.told("unroutable", sum(1 for peer in gone if peer in unreachable))
        self._route_again(retry)
        return out

    def take_local(self) -> tuple[list[LocalRequest], list[LocalReply]]:
        """The requests for local services and the replies to the host's own requests that
        came since the last call, oldest first."""
        return self._local.take()

    def take_local_partials(self) -> list[tuple[bytes, Frames]]:
        """The PARTIALs of streamed replies to the host's own requests that came since the
        last call, oldest first, as (address, frames); the reply still joins them all."""
        return self._local.take_partials()

    def answer_local(self, request: LocalRequest, body: Frames) -> list[Outgoing]:
        """The reply to a request for a local service, in the dialect its client spoke."""
        out: list[Outgoing] = []
        self._out = out
        self._send_client(request.client,
                          build_client_reply(request.dialect, request.service, body))
        return out

    def request_local(self, service: bytes, body: Frames, now: float
                      ) -> tuple[bytes, list[Outgoing]]:
        """Route a request of the host's own, as a 7/MDP client without a socket: its address
        (its reply comes back under it through `take_local()`) and the messages to send."""
        self._now = now
        out: list[Outgoing] = []
        self._out = out
        client = self._local.new_address()
        self._on_client(client, _MDP01, service, body, None)
        return client, out

    def cancel_local(self, client: bytes, service: bytes) -> bool:
        """Take one of the host's requests out of its service's queue, if it still waits there
        (it timed out before any worker took it); True if it did."""
        queue = self._services.get(service)
        if queue is None:
            return False
        for queued in queue.requests:
            if queued.client == client:
                self.book.remove(queue, queued)
                return True
        return False

    def disconnect_all(self) -> list[Outgoing]:
        """DISCONNECT for every registered worker, when the broker stops."""
        out: list[Outgoing] = []
        self._out = out
        for worker in self._workers.values():
            self._send_worker(worker.identity, build_worker(worker.dialect, Command.DISCONNECT))
        return out

    def has_workers(self, service_name: bytes) -> bool:
        """True if at least one live worker is registered for the service now (the host's
        own services always have one)."""
        if service_name in self._local_services:
            return True
        service = self._services.get(service_name)
        return service is not None and service.workers > 0

    def audit(self) -> None:
        """AssertionError unless the queue counts are those of the queues (for tests)."""
        self.book.audit(self._services.values())

    @property
    def worker_count(self) -> int:
        """Workers registered now."""
        return len(self._workers)

    def service_counts(self) -> dict[str, tuple[int, int]]:
        """Live workers and queued requests per service (the host's own services: one worker,
        the host, and none queued); safe to call from another thread."""
        counts = {service.name.decode("utf-8", "replace"): (service.workers,
                                                            len(service.requests))
                  for service in list(self._services.values())}
        for name in self._local_services:
            counts[name.decode()] = (1, 0)
        return counts

    def facts(self) -> dict[str, Any]:
        """The routing's part of what mmi.broker tells: workers, and per service its live
        workers and queued requests."""
        return {"workers": len(self._workers),
                "services": {name: {"workers": workers, "queued": queued}
                             for name, (workers, queued) in self.service_counts().items()}}

    # -- messages -------------------------------------------------------------------------------

    def _dispatch(self, frames: Frames, endpoint: Endpoint, user: bytes | None) -> None:
        """Any message the fast paths did not take: parse it, check its endpoint, act on it."""
        try:
            message = parse_peer_message(frames[1:])
        except ProtocolError as exc:
            self.stats.malformed += 1
            if self._trace:
                log.debug("dropped malformed message: %s", exc)
            return
        if type(message) is ClientRequest:
            if endpoint is _WORKERS:
                self._drops.refused("clients_on_worker_endpoint", frames[0])
                return
            self._on_client(frames[0], message.dialect, message.service, message.body, user)
        elif type(message) is WorkerMessage:
            if endpoint is _CLIENTS:
                self._drops.refused("workers_on_client_endpoint", frames[0])
                if message.command is not Command.DISCONNECT:
                    self._send_client(frames[0], build_worker(message.dialect, Command.DISCONNECT))
                return
            self._on_worker(frames[0], message.dialect, message.command, message.address,
                            message.body, user)

    def _on_client(self, client: bytes, dialect: Dialect, service_name: bytes,
                   body: Frames, user: bytes | None) -> None:
        limit = self._max_request_size
        # One frame is the common case: len() of it is a third of the cost of sum(map(len)).
        if limit and (len(service_name) + (len(body[0]) if len(body) == 1
                                           else sum(map(len, body)))) > limit:
            self._refuse_oversized(client, dialect, service_name, body, limit)
            return
        if len(service_name) > MAX_SERVICE_NAME_BYTES:
            self._refuse_long_name(client, dialect, service_name)
            return
        if not service_name:
            self._drops.refused("malformed", client)
            self._refuse(client, dialect, service_name, refusals.no_service())
            return
        if service_name in self._local_services:
            self.stats.requests += 1
            self._local.requests.append(LocalRequest(client, dialect, service_name, body, user))
            return
        if service_name.startswith(mmi.PREFIX):
            self.stats.mmi_requests += 1
            answer = (mmi.facts_reply(self._facts()) if service_name == mmi.BROKER
                      else [mmi.answer(service_name, body, self.has_workers)])
            self._send_client(client, build_client_reply(dialect, service_name, answer))
            return
        self.stats.requests += 1
        service = self._services.get(service_name)
        if service is None:
            service = self._services[service_name] = ServiceQueue(service_name)
        worker = service.take_worker()
        if worker is not None:
            self._assign(worker, client, dialect, body, user or client, user)
            self._place(worker)
            return
        self._enqueue(service, client, dialect, body, user)

    def _refuse_oversized(self, client: bytes, dialect: Dialect, service_name: bytes,
                          body: Frames, limit: int) -> None:
        """413 for a request (service name and body) over --max-request-size."""
        if len(service_name) > MAX_SERVICE_NAME_BYTES:
            self._refuse_long_name(client, dialect, service_name)
            return
        size = len(service_name) + sum(map(len, body))
        self._drops.refused("oversized_requests", client)
        self._refuse(client, dialect, service_name, refusals.oversized(size, limit))

    def _refuse_long_name(self, client: bytes, dialect: Dialect, service_name: bytes) -> None:
        """413 for a service name over MAX_SERVICE_NAME_BYTES. It names no service (an empty
        service frame): echoing the name would make the broker hold it again."""
        self._drops.refused("oversized_requests", client)
        self._refuse(client, dialect, b"", refusals.long_name(service_name))

    def _enqueue(self, service: ServiceQueue, client: bytes, dialect: Dialect, body: Frames,
                 user: bytes | None) -> None:
        if len(service.requests) >= self.settings.queue_limit:
            self._queue_full(client, dialect, service.name,
                             b"the broker's queue for this service is full (limit %d)"
                             % self.settings.queue_limit)
            return
        if self.book.total >= self.settings.total_queue_limit:
            self._queue_full(client, dialect, service.name,
                             b"the broker's queues are full (limit %d in all)"
                             % self.settings.total_queue_limit)
            return
        counted = user or client
        waiting = self.book.waiting(counted)
        cost = queued_cost(service.name, body)
        if waiting and waiting + cost > self._max_queued_bytes:
            self._drops.refused("over_client_limit", client)
            self._refuse(client, dialect, service.name, refusals.over_client_limit(
                bool(user), self._max_queued_bytes))
            return
        expires_at = self._now + self.settings.request_ttl
        self.book.push(service, QueuedRequest(client, dialect, body, expires_at, counted, user,
                                              cost))
        self.stats.queued += 1

    def _queue_full(self, client: bytes, dialect: Dialect, service_name: bytes,
                    why: bytes) -> None:
        """Refuse a request for want of queue room: "503 ...", counted as rejected."""
        self.stats.rejected_requests += 1
        log.debug("%s: request from client %s for %s refused", why.decode(), client.hex(),
                  quoted_name(service_name))
        self._refuse(client, dialect, service_name, refusals.queue_full(why))

    def _assign(self, worker: RegisteredWorker, client: bytes, dialect: Dialect, body: Frames,
                counted: bytes, user: bytes | None) -> None:
        """Send a request to a worker with credit, and note it as in the worker's hands.

        A worker that asked for identities gets the caller frame in the envelope, before the
        delimiter, where nothing the client sent can be.
        """
        assignment = (client, dialect, self._now, counted, user)
        worker.outstanding.append(assignment)
        self.gave_requests = True
        if worker.identities and user is not None:
            frames = [worker.identity, *_REQUEST_PREFIX[worker.dialect], client,
                      caller_frame(user, admin=user in self.admins), EMPTY, *body]
        else:
            frames = [worker.identity, *_REQUEST_PREFIX[worker.dialect], client, EMPTY, *body]
        self._out.append((True, frames, assignment))

    def _route_again(self, retry: list[tuple[ServiceQueue, QueuedRequest]]) -> None:
        """Requests that did not reach their worker: to another worker, else back in front."""
        front: list[tuple[ServiceQueue, QueuedRequest]] = []
        for service, queued in retry:
            worker = service.take_worker()
            if worker is None:
                front.append((service, queued))
                continue
            self._assign(worker, queued.client, queued.dialect, queued.body, queued.counted,
                         queued.user)
            self._place(worker)
        for service, queued in reversed(front):
            self.book.push(service, queued, front=True)

    def _place(self, worker: RegisteredWorker) -> None:
        """File the worker under idle, spare (credit left) or neither (full), by its load."""
        identity = worker.identity
        service = worker.service
        service.idle.pop(identity, None)
        service.spare.pop(identity, None)
        load = len(worker.outstanding)
        if load == 0:
            service.idle[identity] = worker
        elif load < worker.credit:
            service.spare[identity] = worker

    def _on_worker(self, identity: bytes, dialect: Dialect, command: Command, address: bytes,
                   body: Frames, user: bytes | None) -> None:
        worker = self._workers.get(identity)
        if command is Command.READY:
            self._on_ready(identity, dialect, address, worker, IDENTITY_OPTION in body, user)
            return
        if worker is None:
            if command is not Command.DISCONNECT:
                self.stats.workers_disconnected += 1
                log.debug("%s from unregistered worker %s: DISCONNECT", command.value,
                          identity.hex())
                self._send_worker(identity, build_worker(dialect, Command.DISCONNECT))
            return
        worker.last_seen = self._now
        if command is Command.HEARTBEAT:
            return
        if command is Command.FINAL or command is Command.PARTIAL:
            if worker.outstanding and worker.outstanding[0][0] == address:
                self._on_reply(worker, command is Command.FINAL, body)
                return
            self._disconnect(worker, "reply for a client it was not serving")
            return
        if command is Command.DISCONNECT:
            self._remove_worker(worker, "worker disconnected")
            return
        self._disconnect(worker, f"worker sent {command.value}")

    def _on_ready(self, identity: bytes, dialect: Dialect, service_name: bytes,
                  worker: RegisteredWorker | None, identities: bool, user: bytes | None) -> None:
        if worker is not None:
            self._disconnect(worker, "second READY")
            return
        if mmi.is_mmi(service_name) or len(service_name) > MAX_SERVICE_NAME_BYTES:
            self.stats.workers_disconnected += 1
            log.debug("worker %s tried to register %s: DISCONNECT", identity.hex(),
                      quoted_name(service_name))
            self._send_worker(identity, build_worker(dialect, Command.DISCONNECT))
            return
        if identities and user is not None and user not in self.admins:
            # Only a trusted key learns who its callers are; without CURVE there is no one to
            # tell about, and the worker is served without the frame.
            self._drops.refused("identities_refused", identity)
            log.debug("worker %s (key %s) asked for identities, not an admin key: DISCONNECT",
                      identity.hex(), user.decode(errors="replace"))
            self._send_worker(identity, build_worker(dialect, Command.DISCONNECT,
                                                     IDENTITY_REFUSED))
            return
        service = self._services.get(service_name)
        if service is None:
            service = self._services[service_name] = ServiceQueue(service_name)
        worker = RegisteredWorker(identity, service, dialect, self._now, identities)
        self._workers[identity] = worker
        service.workers += 1
        self.stats.workers_registered += 1
        # One line when a service gains its first worker; a dispatcher alone opens ~20.
        log.log(logging.INFO if service.workers == 1 else logging.DEBUG,
                "worker %s registered for %s (%s), %d worker(s) now", identity.hex(),
                quoted_name(service_name), dialect.value, service.workers,
                extra=about(service=service_name[:255]))
        self._feed(worker)

    def _on_reply(self, worker: RegisteredWorker, final: bool, body: Frames) -> None:
        client, dialect, sent_at, _, _ = worker.outstanding[0]
        service = worker.service.name
        if not final:
            if client.startswith(self._local_prefix):
                self._local.partials.append((client, body))  # the host stores it as it comes
            if dialect is Dialect.MDP01:
                worker.partials.extend(body)  # 7/MDP clients get the whole reply at once
            else:
                self._send_client(client, build_client_reply(dialect, service, body, final=False))
            return
        if worker.partials:
            worker.partials.extend(body)
            body, worker.partials = worker.partials, []
        self.stats.replies += 1
        worker.outstanding.popleft()
        worker.measure(sent_at, self._now, self.settings)
        if client.startswith(self._local_prefix):
            self._local.replies.append((client, body))
        else:
            self._out.append((False, [client, EMPTY, CLIENT_01, service, *body]
                              if dialect is _MDP01
                              else [client, *build_client_reply(dialect, service, body)], None))
        self._feed(worker)

    def _feed(self, worker: RegisteredWorker) -> None:
        """Give the worker queued requests up to its credit, then file it by its load."""
        service = worker.service
        requests = service.requests
        credit = worker.credit
        pop = self.book.pop
        now = self._now
        while requests and len(worker.outstanding) < credit:
            queued = pop(service)
            if queued.expires_at < now:
                self._count_expired(service, queued)
                continue
            self._assign(worker, queued.client, queued.dialect, queued.body, queued.counted,
                         queued.user)
        self._place(worker)

    # -- workers coming and going ---------------------------------------------------------------

    def _disconnect(self, worker: RegisteredWorker, reason: str) -> None:
        self.stats.workers_disconnected += 1
        self._send_worker(worker.identity, build_worker(worker.dialect, Command.DISCONNECT))
        self._remove_worker(worker, reason)

    def _remove_worker(self, worker: RegisteredWorker, reason: str) -> None:
        if self._workers.pop(worker.identity, None) is None:
            return
        service = worker.service
        service.idle.pop(worker.identity, None)
        service.spare.pop(worker.identity, None)
        service.workers -= 1
        if worker.outstanding:  # told in the line below, not again by the drop report
            self.stats.abandoned_requests += len(worker.outstanding)
            self._drops.told("abandoned_requests", len(worker.outstanding))
            log.warning("worker %s for %s removed with %d request(s) in hand (%s): "
                        "their clients must retry", worker.identity.hex(),
                        quoted_name(service.name), len(worker.outstanding), reason)
            for client, dialect, _, _, _ in worker.outstanding:
                # Clients that can tell a refusal from a reply hear at once, not at a timeout.
                if client.startswith((MARKED_CLIENT, self._local_prefix)):
                    self._refuse(client, dialect, service.name, refusals.worker_gone())
            worker.outstanding.clear()
        else:
            log.info("worker %s for %s removed: %s", worker.identity.hex(),
                     quoted_name(service.name), reason)

    # -- housekeeping ---------------------------------------------------------------------------

    def _expire_workers(self) -> None:
        idle_limit = self.settings.worker_expiry
        busy_limit = max(idle_limit, self.settings.busy_worker_timeout)
        for worker in list(self._workers.values()):
            limit = busy_limit if worker.outstanding else idle_limit
            if self._now - worker.last_seen > limit:
                self.stats.workers_expired += 1
                self._drops.told("workers_expired", 1)  # the removal line tells it
                self._remove_worker(worker, f"silent for {self._now - worker.last_seen:.1f} s")

    def _heartbeat_workers(self) -> None:
        for worker in self._workers.values():
            self._send_worker(worker.identity, build_worker(worker.dialect, Command.HEARTBEAT))

    def _expire_requests(self) -> None:
        for name, service in list(self._services.items()):
            requests = service.requests
            while requests and requests[0].expires_at < self._now:
                self._count_expired(service, self.book.pop(service))
            if not requests and service.workers == 0:
                del self._services[name]

    def _count_expired(self, service: ServiceQueue, queued: QueuedRequest) -> None:
        self.stats.expired_requests += 1
        log.debug("request from client %s for %s expired after %.1f s in the queue",
                  queued.client.hex(), quoted_name(service.name), self.settings.request_ttl)

    # -- output ---------------------------------------------------------------------------------

    def _refuse(self, client: bytes, dialect: Dialect, service_name: bytes, body: Frames
                ) -> None:
        """Answer a refusal: to the host, as a Refusal; to a client that marked its connection,
        under an empty service name (no worker's reply has one); to others, under the
        request's service name, like a reply."""
        if client.startswith(self._local_prefix):
            self._local.replies.append((client, parse_refusal(body)))
            return
        marked = client.startswith(MARKED_CLIENT)
        self._send_client(client, build_client_reply(dialect, b"" if marked else service_name,
                                                     body))

    def _send_client(self, identity: bytes, frames: Frames) -> None:
        if identity.startswith(self._local_prefix):  # 7/MDP: "", MDPC01, service, body...
            self._local.replies.append((identity, frames[3:]))
            return
        frames.insert(0, identity)  # the callers build a fresh list for every send
        self._out.append((False, frames, None))

    def _send_worker(self, identity: bytes, frames: Frames) -> None:
        frames.insert(0, identity)
        self._out.append((True, frames, None))
