"""The Majordomo broker: one ROUTER endpoint for 7/MDP, 18/MDP and majortomo's dialect, with 8/MMI.

`Broker` is the I/O around `titanic.broker.core.BrokerCore`, which makes every routing decision:
it owns the ROUTER sockets, the poll loop and its clock, CURVE and the handshake monitors, hands
the core each message with the endpoint it came from and the time, and sends what the core
returns. A REQUEST it cannot deliver to a worker goes back to the core, which routes it again.

Optionally workers get an endpoint (a ROUTER socket) of their own, so CURVE can admit them with
other keys than clients; each peer is then answered on the socket it came in on. With CURVE the
driver also tells the core which keys are admin keys (read again every heartbeat interval).

A `BrokerHost` (titanic.dispatch.hosted.HostedDispatcher: Titanic inside the broker) runs in
the same loop: the core keeps the requests for the host's services aside, and after each batch of
messages the host takes them, with the replies to its own requests, and answers them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import zmq
from zmq.utils.monitor import recv_monitor_message

from titanic import __version__
from titanic._zmq import (
    NOBLOCK,
    LogBudget,
    Waker,
    new_socket,
    recv_frames,
    recv_frames_from,
    send_frames,
)
from titanic.broker.core import PROBE_S, BrokerCore, Endpoint, Outgoing
from titanic.protocol.mdp import Frames
from titanic.security import CurveServer, describe_handshake_failure
from titanic.settings import SHUTDOWN_LINGER_MS, BrokerSettings

__all__ = ["Broker", "BrokerHost", "Endpoint"]

log = logging.getLogger("titanic.broker")

_RECV_BATCH = 512
#: Security handshake failures: a plaintext peer, one with the wrong server key, a refused key.
_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_SHARED = Endpoint.SHARED


class BrokerHost(Protocol):
    """What runs in the broker's loop beside its routing, serving `services` itself."""

    @property
    def services(self) -> frozenset[bytes]:
        """The services the host answers: the broker never routes their requests."""
        ...

    def start(self, broker: Broker, now: float) -> None:
        """The loop begins (the broker is bound): start serving."""
        ...

    def turn(self, now: float) -> float:
        """Take what the core kept for the host and act on it; when to be called again at the
        latest (monotonic seconds; `now` or earlier: at once)."""
        ...

    def finish(self, now: float) -> float | None:
        """The broker is stopping: until when the loop may go on routing the replies to the
        host's requests in flight (None: stop now)."""
        ...

    @property
    def busy(self) -> bool:
        """Requests of the host's own still await their replies."""
        ...

    def close(self) -> None:
        """The loop is over: hand back what is still in flight, stop the host's threads."""
        ...


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
        host: BrokerHost | None = None,
    ) -> None:
        self._host = host
        self._core = BrokerCore(settings, trace=trace, facts=self.facts,
                                local_services=host.services if host else frozenset())
        self.settings = self._core.settings
        self.stats = self._core.stats
        self._endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self._worker_endpoints = ([worker_endpoints] if isinstance(worker_endpoints, str)
                                  else list(worker_endpoints))
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket[bytes] | None = None  # clients (and workers when shared)
        self._worker_socket: zmq.Socket[bytes] | None = None  # workers: the same one when shared
        self._waker = Waker()
        self._trace = trace
        #: Peers that messages could not reach since the core was last told: their connection
        #: is gone (ROUTER_MANDATORY's EHOSTUNREACH). Kept by _send, handed to the core.
        self._gone: list[bytes] = []
        self.curve = curve
        self._monitors: dict[zmq.Socket[bytes], Endpoint] = {}
        self._opened: list[zmq.Socket[bytes]] = []  # every ROUTER socket, to close at the end
        self._handshake_log = LogBudget()
        self._now = time.monotonic()
        self._next_tick = self._now
        self._next_probe = float("inf")  # while no worker holds a request (BrokerCore.probe)
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
                self._core.admins = self.curve.admin_keys()
            self._socket = self._open(self._endpoints, self.bound,
                                      Endpoint.CLIENTS if separate else Endpoint.SHARED)
            self._worker_socket = self._socket
            if separate:
                self._worker_socket = self._open(self._worker_endpoints, self.worker_bound,
                                                 Endpoint.WORKERS)
        except BaseException:
            self._shutdown(served=False)  # an endpoint in use: release what was opened
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

    @property
    def core(self) -> BrokerCore:
        """The routing the driver drives (a host calls it from the loop's thread only)."""
        return self._core

    @property
    def context(self) -> zmq.Context[zmq.Socket[bytes]]:
        """The ZeroMQ context of the broker's sockets."""
        return self._context

    def run(self) -> None:
        """Serve until `stop()`; then DISCONNECT every worker and close."""
        if self._socket is None:
            self.bind()
        sock, worker_sock = self._socket, self._worker_socket
        assert sock is not None and worker_sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if worker_sock is not sock:
            poller.register(worker_sock, zmq.POLLIN)
        poller.register(self._waker.fileno(), zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        host = self._host
        self._next_tick = time.monotonic() + self.settings.heartbeat_interval
        self._running = True
        try:
            if host is not None:
                host.start(self, time.monotonic())
            wake = self._next_tick
            while not self._waker.stopped.is_set():
                wake = self._serve_once(poller, wake)
            if host is not None:
                self._finish_host(poller, host)
        finally:
            self._running = False
            try:
                if host is not None:
                    host.close()
            finally:
                self._shutdown()

    def _serve_once(self, poller: zmq.Poller, wake: float) -> float:
        """Wait until a message comes or `wake`, handle what came, let the host take its turn
        and tick when it is time; when to wake next at the latest."""
        sock, worker_sock = self._socket, self._worker_socket
        delay = min(wake, self._next_tick, self._next_probe) - time.monotonic()
        ready = dict(poller.poll(int(delay * 1000) + 1 if delay > 0 else 0))
        self._now = time.monotonic()
        if ready:
            if sock in ready:
                assert sock is not None
                self._drain(sock, Endpoint.CLIENTS if worker_sock is not sock else _SHARED)
            if worker_sock is not sock and worker_sock in ready:
                assert worker_sock is not None
                self._drain(worker_sock, Endpoint.WORKERS)
            for monitor, role in self._monitors.items():
                if monitor in ready:
                    self._count_handshake_failures(monitor, role)
        host_wake = self._next_tick
        if self._host is not None:
            host_wake = self._host.turn(self._now)
        if self._now >= self._next_tick:
            if self.curve is not None:
                self._core.admins = self.curve.admin_keys()
            self._flush(self._core.tick(self._now))
            self._next_tick = self._now + self.settings.heartbeat_interval
        if self._now >= self._next_probe:
            probes, busy = self._core.probe(self._now)
            self._flush(probes)
            self._next_probe = self._now + PROBE_S if busy else float("inf")
        elif self._core.gave_requests and self._next_probe == float("inf"):
            self._next_probe = self._now + PROBE_S  # a worker holds requests: probe from now
        return host_wake

    def _finish_host(self, poller: zmq.Poller, host: BrokerHost) -> None:
        """After stop(): go on routing while the host waits for replies in flight."""
        deadline = host.finish(time.monotonic())
        if deadline is None:
            return
        poller.unregister(self._waker.fileno())  # it stays readable once woken
        wake = time.monotonic()
        while host.busy and time.monotonic() < deadline:
            wake = self._serve_once(poller, min(wake, deadline))

    def _drain(self, sock: zmq.Socket[bytes], role: Endpoint) -> None:
        """Handle the messages waiting now, in a bounded batch."""
        receive, send, now, trace = self._core.receive, self._send, self._now, self._trace
        socket, worker_socket, gone = self._socket, self._worker_socket, self._gone
        curve = self.curve is not None
        user: bytes | None = None
        for _ in range(_RECV_BATCH):
            try:
                if curve:  # with CURVE, a client is its key: read the User-Id ZAP set
                    frames, user = recv_frames_from(sock, NOBLOCK)
                else:
                    frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return
            if trace:
                log.debug("recv %r", frames)
            # _flush() inlined for the one or two messages most calls return: this loop is hot.
            failed: list[Outgoing] | None = None
            for message in receive(frames, role, now, user):
                if (not send(worker_socket if message[0] else socket, message[1])
                        and message[2] is not None):
                    failed = failed or []
                    failed.append(message)
            if failed is not None or gone:
                self._flush(self._core.undeliverable(failed or [], now, self._take_gone()))

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

    def _shutdown(self, served: bool = True) -> None:
        for _, frames, _ in self._core.disconnect_all():
            self._send(self._worker_socket, frames)
        self._gone.clear()  # workers that left before the DISCONNECT: nothing more to tell
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
        if served:  # a broker that never bound says nothing more than its caller's error
            log.info("broker stopped: %s", self.stats)

    # -- messages -------------------------------------------------------------------------------

    def handle(self, frames: Frames, endpoint: Endpoint = _SHARED, user: bytes | None = None
               ) -> None:
        """Handle one message from a ROUTER socket (identity frame first) serving `endpoint`;
        `user` is the sender's authenticated CURVE key (Z85), None without CURVE."""
        if self._trace:
            log.debug("recv %r", frames)
        self._flush(self._core.receive(frames, endpoint, self._now, user))

    def has_workers(self, service_name: bytes) -> bool:
        """True if at least one live worker is registered for the service now."""
        return self._core.has_workers(service_name)

    def service_counts(self) -> dict[str, tuple[int, int]]:
        """Live workers and queued requests per service; safe to call from another thread."""
        return self._core.service_counts()

    def facts(self) -> dict[str, Any]:
        """What mmi.broker tells: version, uptime, endpoints, and per service its live workers
        and queued requests."""
        return {"version": __version__, "uptime_s": round(time.time() - self.started, 3),
                "endpoints": self.bound, **self._core.facts()}

    def health(self) -> tuple[bool, str]:
        """Serving, and why not: the loop must be running and have come round within two
        heartbeat intervals (it wakes at least once per interval)."""
        if not self._running:
            return False, "broker not running"
        silent = time.monotonic() - self._now
        if silent > 2 * self.settings.heartbeat_interval + 1.0:
            return False, f"broker loop stuck for {silent:.1f} s"
        return True, f"broker serving {self._core.worker_count} worker(s)"

    # -- output ---------------------------------------------------------------------------------

    def send(self, out: list[Outgoing]) -> None:
        """Send what the core returned to a host's call (from the loop's thread only)."""
        self._flush(out)

    def _flush(self, out: list[Outgoing]) -> None:
        """Send what the core returned; REQUESTs that fail go back to it until none does."""
        send, socket, worker_socket = self._send, self._socket, self._worker_socket
        while out:
            failed: list[Outgoing] | None = None
            for message in out:
                if (not send(worker_socket if message[0] else socket, message[1])
                        and message[2] is not None):
                    failed = failed or []
                    failed.append(message)
            if failed is None and not self._gone:
                return
            out = self._core.undeliverable(failed or [], self._now, self._take_gone())

    def _take_gone(self) -> list[bytes]:
        """The peers found gone since the last call, forgotten here."""
        gone = self._gone[:]
        self._gone.clear()
        return gone

    def _send(self, sock: zmq.Socket[bytes] | None, frames: Frames) -> bool:
        """Send to a peer on its socket; an unknown peer or a full pipe is counted, never raised."""
        if sock is None:
            return False
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
            self._gone.append(frames[0])
            return False
        return True
