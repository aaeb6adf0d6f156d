"""The Majordomo broker: one ROUTER endpoint for 7/MDP, 18/MDP and majortomo's dialect, with 8/MMI.

Clients and workers are answered in the dialect they spoke, and a request may cross versions: a
7/MDP client served by an 18/MDP worker gets one REPLY holding every PARTIAL and FINAL body frame.
Nothing a peer sends can raise out of the loop: malformed messages are dropped and counted.

Optionally workers get an endpoint (a ROUTER socket) of their own, so CURVE can admit them with
other keys than clients; each peer is then answered on the socket it came in on. Limits per
client (request size, requests queued) are refused with a status reply, like `mmi.*` answers:
"413 ..." for a request over the size limit, "503 ..." when the client has too many queued or
the service's queue is full. With CURVE a client is its authenticated public key (ZAP's User-Id):
its connections share one per-client limit, and a worker whose own key is in the admin folder
may ask, in its READY, to be told each request's caller (titanic.protocol.identity): how the
dispatcher learns who owns a request.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from titanic import __version__
from titanic._zmq import NOBLOCK, Waker, new_socket, recv_frames, recv_frames_from, send_frames
from titanic.broker_stats import BrokerStats, DropReport
from titanic.errors import ProtocolError
from titanic.logs import about
from titanic.protocol import mmi
from titanic.protocol.identity import IDENTITY_OPTION, caller_frame
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
from titanic.security import CurveServer, LogBudget, describe_handshake_failure
from titanic.settings import SHUTDOWN_LINGER_MS, BrokerSettings

log = logging.getLogger(__name__)

_RECV_BATCH = 512
#: Security handshake failures: a plaintext peer, one with the wrong server key, a refused key.
_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
#: Status replies to requests refused by a per-client limit (three digits, as TSP and MMI use).
OVERSIZED = b"413"
OVER_CLIENT_LIMIT = b"503"
QUEUE_FULL = b"503"


class Endpoint(enum.Enum):
    """Which peers a broker socket serves."""

    SHARED = "clients and workers"
    CLIENTS = "clients"
    WORKERS = "workers"


# Enum members looked up as globals: `Endpoint.X` costs ~70 ns a time on CPython 3.11.
_SHARED, _CLIENTS, _WORKERS = Endpoint.SHARED, Endpoint.CLIENTS, Endpoint.WORKERS
_MDP01 = Dialect.MDP01
#: 7/MDP's REPLY (FINAL) command, and every dialect's REQUEST prefix, built once.
_FINAL_01 = worker_command_prefix(Dialect.MDP01, Command.FINAL)[-1]
_REQUEST_PREFIX = {dialect: worker_command_prefix(dialect, Command.REQUEST) for dialect in Dialect}


def _show(name: bytes) -> str:
    """A peer-supplied name, short enough for a log line."""
    return repr(name[:40]) + ("..." if len(name) > 40 else "")


class _Queued(NamedTuple):
    client: bytes
    dialect: Dialect
    body: Frames
    expires_at: float
    #: Whom the per-client limit counts it against: the CURVE key, else the connection.
    counted: bytes
    #: The client's CURVE key (Z85), None without CURVE.
    user: bytes | None


class _Service:
    __slots__ = ("name", "requests", "idle", "spare", "workers")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.requests: deque[_Queued] = deque()
        self.idle: dict[bytes, _Worker] = {}  # no request in hand; least recently used first
        self.spare: dict[bytes, _Worker] = {}  # busy, but with prefetch credit left
        self.workers = 0

    def take_worker(self) -> _Worker | None:
        """The least recently used idle worker, else a busy one with credit left."""
        pool = self.idle or self.spare
        if not pool:
            return None
        return pool.pop(next(iter(pool)))


class _Worker:
    __slots__ = ("identity", "service", "dialect", "last_seen", "outstanding", "partials",
                 "credit", "per_request", "last_reply", "identities")

    def __init__(self, identity: bytes, service: _Service, dialect: Dialect, now: float,
                 identities: bool = False) -> None:
        self.identity = identity
        self.service = service
        self.dialect = dialect
        self.identities = identities  # its REQUESTs carry the caller frame
        self.last_seen = now
        # Requests sent and not yet answered, oldest first: (client identity, client dialect,
        # when sent). A worker answers them in order, one at a time; with credit > 1 the next
        # ones wait in the worker's socket instead of the broker's queue, saving a round trip
        # per request.
        self.outstanding: deque[tuple[bytes, Dialect, float]] = deque()
        self.partials: Frames = []
        self.credit = 1  # requests it may hold; grows once it has shown to be quick
        self.per_request: float | None = None  # moving average of its time per request, s
        self.last_reply = now

    def measure(self, sent_at: float, now: float, settings: BrokerSettings) -> None:
        """A reply came: update the time per request and, from it, the credit.

        The worker started on this request when it was sent or when it answered the previous
        one, whichever was later. Credit lets the requests queued at a worker wait about
        `prefetch_wait` at most: one at a time for slow work, up to `worker_prefetch` for quick.
        """
        took = now - max(sent_at, self.last_reply)
        self.last_reply = now
        average = self.per_request
        average = took if average is None else average + 0.2 * (took - average)
        self.per_request = average
        wait, ceiling = settings.prefetch_wait, settings.worker_prefetch
        if wait <= 0:
            self.credit = 1
        elif average <= 0:  # answered within the same batch of messages: quicker than we see
            self.credit = ceiling
        else:
            self.credit = max(1, min(ceiling, 1 + int(wait / average)))


class Broker:
    """A Majordomo broker bound to one or more endpoints; `run()` serves until `stop()`.

    With `worker_endpoints`, workers register there and clients on `endpoints`: a worker command
    on the client endpoint gets DISCONNECT, a client request on the worker endpoint is dropped.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        settings: BrokerSettings | None = None,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        trace: bool = False,
        curve: CurveServer | None = None,
        worker_endpoints: str | Sequence[str] = (),
    ) -> None:
        self.settings = settings or BrokerSettings()
        self._max_request_size = self.settings.max_request_size
        self._max_queued_per_client = self.settings.max_queued_per_client
        self.stats = BrokerStats()
        self._endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self._worker_endpoints = ([worker_endpoints] if isinstance(worker_endpoints, str)
                                  else list(worker_endpoints))
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket[bytes] | None = None  # clients (and workers when shared)
        self._worker_socket: zmq.Socket[bytes] | None = None  # workers: the same one when shared
        self._services: dict[bytes, _Service] = {}
        self._workers: dict[bytes, _Worker] = {}
        self._queued_total = 0
        self._queued_by_client: dict[bytes, int] = {}
        self._admins: frozenset[bytes] = frozenset()  # Z85 keys of the admin folder
        self._drops = DropReport(self.stats)
        self._waker = Waker()
        self._trace = trace
        self.curve = curve
        self._monitors: dict[zmq.Socket[bytes], Endpoint] = {}
        self._opened: list[zmq.Socket[bytes]] = []  # every ROUTER socket, to close at the end
        self._handshake_log = LogBudget()
        self._now = time.monotonic()
        self._running = False
        #: When the broker was made (seconds since the epoch), for its uptime.
        self.started = time.time()
        self.bound: list[str] = []
        self.worker_bound: list[str] = []

    # -- life cycle -----------------------------------------------------------------------------

    def bind(self) -> list[str]:
        """Bind every endpoint; returns the client endpoints' resolved addresses (a port of 0 or *
        becomes real); a separate worker endpoint's are in `worker_bound`."""
        if self._socket is not None:
            return self.bound
        separate = bool(self._worker_endpoints)
        try:
            if self.curve is not None:
                self.curve.start(self._context)
                self._admins = self.curve.admin_keys()
            self._socket = self._open(self._endpoints, self.bound,
                                      Endpoint.CLIENTS if separate else Endpoint.SHARED)
            self._worker_socket = self._socket
            if separate:
                self._worker_socket = self._open(self._worker_endpoints, self.worker_bound,
                                                 Endpoint.WORKERS)
        except BaseException:
            self._shutdown()  # an endpoint in use: release what was opened, then say so
            raise
        if separate:
            log.info("broker listening for clients on %s, for workers on %s",
                     ", ".join(self.bound), ", ".join(self.worker_bound))
        else:
            log.info("broker listening on %s", ", ".join(self.bound))
        return self.bound

    def _open(self, endpoints: Sequence[str], bound: list[str],
              role: Endpoint) -> zmq.Socket[bytes]:
        sock = new_socket(self._context, zmq.ROUTER,
                          max_message_size=self.settings.max_message_size)
        self._opened.append(sock)
        sock.router_mandatory = 1
        if self.curve is not None:
            self.curve.configure(sock, workers=role is Endpoint.WORKERS)
            # A name of our own: pyzmq's default, after the socket's descriptor, can still be
            # bound by a socket closed a moment ago in a shared context.
            address = f"inproc://titanic-broker-{id(self):x}-{role.name.lower()}-handshakes"
            self._monitors[sock.get_monitor_socket(_HANDSHAKE_FAILURES, addr=address)] = role
        sock.sndhwm = 100_000
        sock.rcvhwm = 100_000
        for endpoint in endpoints:
            sock.bind(endpoint)
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        return sock

    def stop(self) -> None:
        """Ask `run()` to return; safe from other threads and signal handlers."""
        self._waker.wake()

    def run(self) -> None:
        """Serve until `stop()`; then DISCONNECT every worker and close."""
        if self._socket is None:
            self.bind()
        sock, worker_sock = self._socket, self._worker_socket
        assert sock is not None and worker_sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        separate = worker_sock is not sock
        if separate:
            poller.register(worker_sock, zmq.POLLIN)
        poller.register(self._waker.fileno(), zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        client_role = Endpoint.CLIENTS if separate else Endpoint.SHARED
        interval = self.settings.heartbeat_interval
        next_tick = time.monotonic() + interval
        self._running = True
        try:
            while not self._waker.stopped.is_set():
                timeout_ms = int(max(0.0, (next_tick - time.monotonic()) * 1000)) + 1
                ready = dict(poller.poll(timeout_ms))
                self._now = time.monotonic()
                if sock in ready:
                    self._drain(sock, client_role)
                if separate and worker_sock in ready:
                    self._drain(worker_sock, Endpoint.WORKERS)
                for monitor, role in self._monitors.items():
                    if monitor in ready:
                        self._count_handshake_failures(monitor, role)
                if self._now >= next_tick:
                    self._tick()
                    next_tick = self._now + interval
        finally:
            self._running = False
            self._shutdown()

    def _drain(self, sock: zmq.Socket[bytes], role: Endpoint) -> None:
        """Handle the messages waiting now, in a bounded batch."""
        if self.curve is not None:
            for _ in range(_RECV_BATCH):
                try:
                    frames, user = recv_frames_from(sock, NOBLOCK)
                except zmq.Again:
                    return
                self.handle(frames, role, user)
            return
        for _ in range(_RECV_BATCH):
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return
            self.handle(frames, role)

    def _count_handshake_failures(self, monitor: zmq.Socket[bytes], role: Endpoint) -> None:
        """Count failed handshakes; log a few per interval (ZAP logs refused keys by address)."""
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            kind, value = int(event["event"]), int(event["value"])
            self.stats.handshakes_failed += 1
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.stats.keys_refused += 1
                continue  # the ZAP handler logged it, with the peer's address and key
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                self.stats.plaintext_refused += 1
            if self._handshake_log.allow():
                # libzmq's monitor names our endpoint, not the peer's address, for these.
                log.warning("refused a peer on the %s endpoint %s: %s", role.value,
                            event["endpoint"].decode(errors="replace"),
                            describe_handshake_failure(kind, value, server=True))

    def _shutdown(self) -> None:
        for worker in list(self._workers.values()):
            self._send(self._worker_socket, worker.identity,
                       build_worker(worker.dialect, Command.DISCONNECT))
        for sock in self._opened:
            if self._monitors:
                sock.disable_monitor()
            sock.close(linger=SHUTDOWN_LINGER_MS)
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()
        self._opened.clear()
        self._socket = self._worker_socket = None
        if self.curve is not None:
            self.curve.stop()
        if self._own_context:
            self._context.term()
        self._waker.close()
        log.info("broker stopped: %s", self.stats.as_dict())

    # -- messages -------------------------------------------------------------------------------

    def handle(self, frames: Frames, endpoint: Endpoint = _SHARED, user: bytes | None = None
               ) -> None:
        """Handle one message from a ROUTER socket (identity frame first) serving `endpoint`;
        `user` is the sender's authenticated CURVE key (Z85), None without CURVE."""
        self.stats.messages += 1
        if self._trace:
            log.debug("recv %r", frames)
        # The two messages of every 7/MDP round trip, recognised without the general parser:
        # a client's request and a worker's reply to the client at the head of its queue.
        if len(frames) > 3 and not frames[1]:
            header = frames[2]
            if header == CLIENT_01:
                if frames[3] and endpoint is not _WORKERS:
                    self._on_client(frames[0], _MDP01, frames[3], frames[4:], user)
                    return
            elif header == WORKER_01 and len(frames) > 5 and frames[3] == _FINAL_01:
                worker = self._workers.get(frames[0])
                if (worker is not None and not frames[5] and worker.outstanding
                        and worker.outstanding[0][0] == frames[4] and endpoint is not _CLIENTS):
                    worker.last_seen = self._now
                    self._on_reply(worker, True, frames[6:])
                    return
        try:
            message = parse_peer_message(frames[1:])
        except ProtocolError as exc:
            self.stats.malformed += 1
            if self._trace:
                log.debug("dropped malformed message: %s", exc)
            return
        if type(message) is ClientRequest:
            if endpoint is _WORKERS:
                self._refuse(frames[0], "clients_on_worker_endpoint")
                return
            self._on_client(frames[0], message.dialect, message.service, message.body, user)
        elif type(message) is WorkerMessage:
            if endpoint is _CLIENTS:
                self._refuse(frames[0], "workers_on_client_endpoint")
                if message.command is not Command.DISCONNECT:
                    self._send(self._socket, frames[0],
                               build_worker(message.dialect, Command.DISCONNECT))
                return
            self._on_worker(frames[0], message.dialect, message.command, message.address,
                            message.body, user)

    def _refuse(self, peer: bytes, counter: str) -> None:
        """Count a refused message; the interval report names the last peer refused."""
        self._drops.refused(counter, peer)

    def _on_client(self, client: bytes, dialect: Dialect, service_name: bytes,
                   body: Frames, user: bytes | None = None) -> None:
        limit = self._max_request_size
        # One frame is the common case: len() of it is a third of the cost of sum(map(len)).
        if limit and (size := len(body[0]) if len(body) == 1 else sum(map(len, body))) > limit:
            self._refuse(client, "oversized_requests")
            self._send(self._socket, client, build_client_reply(
                dialect, service_name,
                [OVERSIZED + b" request of %d bytes exceeds the broker's limit of %d bytes"
                 % (size, limit)]))
            return
        if service_name.startswith(mmi.PREFIX):
            self.stats.mmi_requests += 1
            answer = (mmi.facts_reply(self.facts()) if service_name == mmi.BROKER
                      else [mmi.answer(service_name, body, self.has_workers)])
            self._send(self._socket, client, build_client_reply(dialect, service_name, answer))
            return
        self.stats.requests += 1
        service = self._services.get(service_name)
        if service is None:
            service = self._services[service_name] = _Service(service_name)
        while (worker := service.take_worker()) is not None:
            if self._assign(worker, client, dialect, body, user):
                self._place(worker)
                return
        self._enqueue(service, client, dialect, body, user)

    def _enqueue(self, service: _Service, client: bytes, dialect: Dialect, body: Frames,
                 user: bytes | None) -> None:
        if len(service.requests) >= self.settings.queue_limit:
            self._queue_full(client, dialect, service.name,
                             b"the broker's queue for this service is full (limit %d)"
                             % self.settings.queue_limit)
            return
        if self._queued_total >= self.settings.total_queue_limit:
            self._queue_full(client, dialect, service.name,
                             b"the broker's queues are full (limit %d in all)"
                             % self.settings.total_queue_limit)
            return
        counted = user or client
        waiting = self._queued_by_client.get(counted, 0)
        if waiting >= self._max_queued_per_client:
            self._refuse(client, "over_client_limit")
            self._send(self._socket, client, build_client_reply(
                dialect, service.name,
                [OVER_CLIENT_LIMIT + b" too many queued requests from this %s (limit %d): "
                 b"retry later" % (b"key" if user else b"client",
                                   self.settings.max_queued_per_client)]))
            return
        self._queued_by_client[counted] = waiting + 1
        expires_at = self._now + self.settings.request_ttl
        service.requests.append(_Queued(client, dialect, body, expires_at, counted, user))
        self._queued_total += 1
        self.stats.queued += 1

    def _queue_full(self, client: bytes, dialect: Dialect, service_name: bytes,
                    why: bytes) -> None:
        """Refuse a request for want of queue room: "503 ...", counted as rejected."""
        self.stats.rejected_requests += 1
        log.debug("%s: request from client %s for %s refused", why.decode(), client.hex(),
                  _show(service_name))
        self._send(self._socket, client, build_client_reply(
            dialect, service_name, [QUEUE_FULL + b" " + why + b": retry later"]))

    def _unqueued(self, counted: bytes) -> None:
        """A request counted against this client (key or connection) left the queue."""
        left = self._queued_by_client[counted] - 1
        if left:
            self._queued_by_client[counted] = left
        else:
            del self._queued_by_client[counted]

    def _assign(self, worker: _Worker, client: bytes, dialect: Dialect, body: Frames,
                user: bytes | None) -> bool:
        """Send a request to a worker with credit; False (worker removed) if it is unreachable.

        A worker that asked for identities gets the caller frame in the envelope, before the
        delimiter, where nothing the client sent can be.
        """
        if worker.identities and user is not None:
            frames = [*_REQUEST_PREFIX[worker.dialect], client,
                      caller_frame(user, admin=user in self._admins), EMPTY, *body]
        else:
            frames = [*_REQUEST_PREFIX[worker.dialect], client, EMPTY, *body]
        if self._send(self._worker_socket, worker.identity, frames):
            worker.outstanding.append((client, dialect, self._now))
            return True
        self._remove_worker(worker, "unreachable")
        return False

    def _place(self, worker: _Worker) -> None:
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
                   body: Frames, user: bytes | None = None) -> None:
        worker = self._workers.get(identity)
        if command is Command.READY:
            self._on_ready(identity, dialect, address, worker, IDENTITY_OPTION in body, user)
            return
        if worker is None:
            if command is not Command.DISCONNECT:
                self.stats.workers_disconnected += 1
                log.debug("%s from unregistered worker %s: DISCONNECT", command.value,
                          identity.hex())
                self._send(self._worker_socket, identity,
                           build_worker(dialect, Command.DISCONNECT))
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
                  worker: _Worker | None, identities: bool, user: bytes | None) -> None:
        if worker is not None:
            self._disconnect(worker, "second READY")
            return
        if mmi.is_mmi(service_name):
            self.stats.workers_disconnected += 1
            log.debug("worker %s tried to register %s: DISCONNECT", identity.hex(),
                      _show(service_name))
            self._send(self._worker_socket, identity, build_worker(dialect, Command.DISCONNECT))
            return
        if identities and user is not None and user not in self._admins:
            # Only a trusted key learns who its callers are; without CURVE there is no one to
            # tell about, and the worker is served without the frame.
            self._refuse(identity, "identities_refused")
            log.debug("worker %s (key %s) asked for identities, not an admin key: DISCONNECT",
                      identity.hex(), user.decode(errors="replace"))
            self._send(self._worker_socket, identity, build_worker(dialect, Command.DISCONNECT))
            return
        service = self._services.get(service_name)
        if service is None:
            service = self._services[service_name] = _Service(service_name)
        worker = _Worker(identity, service, dialect, self._now, identities)
        self._workers[identity] = worker
        service.workers += 1
        self.stats.workers_registered += 1
        log.info("worker %s registered for %s (%s)", identity.hex(), _show(service_name),
                 dialect.value, extra=about(service=service_name[:255]))
        self._feed(worker)

    def _on_reply(self, worker: _Worker, final: bool, body: Frames) -> None:
        client, dialect, sent_at = worker.outstanding[0]
        service = worker.service.name
        if not final:
            if dialect is Dialect.MDP01:
                worker.partials.extend(body)  # 7/MDP clients get the whole reply at once
            else:
                self._send(self._socket, client,
                           build_client_reply(dialect, service, body, final=False))
            return
        if worker.partials:
            worker.partials.extend(body)
            body, worker.partials = worker.partials, []
        self.stats.replies += 1
        worker.outstanding.popleft()
        worker.measure(sent_at, self._now, self.settings)
        self._send(self._socket, client,
                   [EMPTY, CLIENT_01, service, *body] if dialect is _MDP01
                   else build_client_reply(dialect, service, body))
        self._feed(worker)

    def _feed(self, worker: _Worker) -> None:
        """Give the worker queued requests up to its credit, then file it by its load."""
        service = worker.service
        requests = service.requests
        credit = worker.credit
        by_client = self._queued_by_client
        while requests and len(worker.outstanding) < credit:
            queued = requests.popleft()
            self._queued_total -= 1
            left = by_client[queued.counted] - 1  # inline _unqueued(): this loop is hot
            if left:
                by_client[queued.counted] = left
            else:
                del by_client[queued.counted]
            if queued.expires_at < self._now:
                self._count_expired(service, queued)
                continue
            if not self._assign(worker, queued.client, queued.dialect, queued.body,
                                queued.user):
                requests.appendleft(queued)
                self._queued_total += 1
                by_client[queued.counted] = by_client.get(queued.counted, 0) + 1
                return
        self._place(worker)

    # -- workers coming and going ---------------------------------------------------------------

    def _disconnect(self, worker: _Worker, reason: str) -> None:
        self.stats.workers_disconnected += 1
        self._send(self._worker_socket, worker.identity,
                   build_worker(worker.dialect, Command.DISCONNECT))
        self._remove_worker(worker, reason)

    def _remove_worker(self, worker: _Worker, reason: str) -> None:
        if self._workers.pop(worker.identity, None) is None:
            return
        service = worker.service
        service.idle.pop(worker.identity, None)
        service.spare.pop(worker.identity, None)
        service.workers -= 1
        if worker.outstanding:
            self.stats.abandoned_requests += len(worker.outstanding)
            log.info("worker %s for %s removed with %d request(s) in hand (%s): "
                     "their clients must retry", worker.identity.hex(), _show(service.name),
                     len(worker.outstanding), reason)
        else:
            log.info("worker %s for %s removed: %s", worker.identity.hex(), _show(service.name),
                     reason)

    def has_workers(self, service_name: bytes) -> bool:
        """True if at least one live worker is registered for the service now."""
        service = self._services.get(service_name)
        return service is not None and service.workers > 0

    def service_counts(self) -> dict[str, tuple[int, int]]:
        """Live workers and queued requests per service; safe to call from another thread."""
        return {service.name.decode("utf-8", "replace"): (service.workers, len(service.requests))
                for service in list(self._services.values())}

    def facts(self) -> dict[str, Any]:
        """What mmi.broker tells: version, uptime, endpoints, and per service its live workers
        and queued requests."""
        return {"version": __version__, "uptime_s": round(time.time() - self.started, 3),
                "endpoints": self.bound, "workers": len(self._workers),
                "services": {name: {"workers": workers, "queued": queued}
                             for name, (workers, queued) in self.service_counts().items()}}

    def health(self) -> tuple[bool, str]:
        """Serving, and why not: the loop must be running and have come round within two
        heartbeat intervals (it wakes at least once per interval)."""
        if not self._running:
            return False, "broker not running"
        silent = time.monotonic() - self._now
        if silent > 2 * self.settings.heartbeat_interval + 1.0:
            return False, f"broker loop stuck for {silent:.1f} s"
        return True, f"broker serving {len(self._workers)} worker(s)"

    # -- housekeeping, once per heartbeat interval ----------------------------------------------

    def _tick(self) -> None:
        if self.curve is not None:
            self._admins = self.curve.admin_keys()
        self._expire_workers()
        self._heartbeat_workers()
        self._expire_requests()
        self._drops.report(self.settings.heartbeat_interval)

    def _expire_workers(self) -> None:
        idle_limit = self.settings.worker_expiry
        busy_limit = max(idle_limit, self.settings.busy_worker_timeout)
        for worker in list(self._workers.values()):
            limit = busy_limit if worker.outstanding else idle_limit
            if self._now - worker.last_seen > limit:
                self.stats.workers_expired += 1
                self._remove_worker(worker, f"silent for {self._now - worker.last_seen:.1f} s")

    def _heartbeat_workers(self) -> None:
        sock = self._worker_socket
        for worker in list(self._workers.values()):
            self._send(sock, worker.identity, build_worker(worker.dialect, Command.HEARTBEAT))

    def _expire_requests(self) -> None:
        for name, service in list(self._services.items()):
            requests = service.requests
            while requests and requests[0].expires_at < self._now:
                queued = requests.popleft()
                self._count_expired(service, queued)
                self._unqueued(queued.counted)
                self._queued_total -= 1
            if not requests and service.workers == 0:
                del self._services[name]

    def _count_expired(self, service: _Service, queued: _Queued) -> None:
        self.stats.expired_requests += 1
        log.debug("request from client %s for %s expired after %.1f s in the queue",
                  queued.client.hex(), _show(service.name), self.settings.request_ttl)

    # -- output ---------------------------------------------------------------------------------

    def _send(self, sock: zmq.Socket[bytes] | None, identity: bytes, frames: Frames) -> bool:
        """Send to a peer on its socket; an unknown peer or a full pipe is counted, never raised."""
        if sock is None:
            return False
        frames.insert(0, identity)  # the callers build a fresh list for every send
        if self._trace:
            log.debug("send %r", frames)
        try:
            send_frames(sock, frames, NOBLOCK)
        except zmq.Again:
            self.stats.dropped_at_hwm += 1
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.stats.unroutable += 1
            return False
        return True
