"""One MDP worker socket: READY, heartbeats both ways, DISCONNECT, reconnection with backoff.

`titanic.worker.mdp.Worker` drives one connection in a blocking loop;
`titanic.worker.pool.WorkerPool` drives many from one SocketSet. The connection only keeps the
protocol's promises on its socket (and, with `identities`, reads the caller the broker puts in each
REQUEST's envelope): what to do with a request is its driver's business.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import zmq

from titanic._zmq import (
    NOBLOCK,
    POLLIN,
    SocketHook,
    SocketSet,
    new_socket,
    recv_frames,
    send_frames,
    socket_events,
)
from titanic.errors import IdentityRefusedError, ProtocolError
from titanic.logs import quoted_name
from titanic.protocol.identity import IDENTITY_REFUSED, Caller, parse_caller_frame
from titanic.protocol.mdp import (
    Command,
    Dialect,
    Frames,
    WorkerCodec,
    build_ready,
    build_worker,
    parse_worker_inbound,
)
from titanic.settings import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    RECONNECT_INITIAL_S,
    RECONNECT_MAX_S,
)

log = logging.getLogger("titanic.worker")

#: A request as a connection reads it: the client's address, the body, and who sent it.
Inbound = tuple[bytes, Frames, Caller | None]


@dataclass(frozen=True)
class ConnectionSettings:
    """Heartbeat and reconnect timing of a worker connection, in seconds."""

    heartbeat_interval: float = HEARTBEAT_INTERVAL_S
    liveness: int = HEARTBEAT_LIVENESS
    reconnect_initial: float = RECONNECT_INITIAL_S
    reconnect_max: float = RECONNECT_MAX_S


class WorkerConnection:
    """One MDP worker socket: READY, heartbeats both ways, reconnection with backoff.

    With `identities`, READY asks the broker for each request's caller.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], broker: str, service: bytes,
                 *, dialect: Dialect = Dialect.MDP01,
                 settings: ConnectionSettings | None = None,
                 configure_socket: SocketHook | None = None,
                 watch: SocketSet | None = None, identities: bool = False) -> None:
        self.broker = broker
        self.service = service
        self.dialect = dialect
        self.identities = identities
        self.settings = settings or ConnectionSettings()
        self.socket: zmq.Socket[bytes] | None = None
        self._context = context
        self._configure = configure_socket
        self._watch = watch  # a SocketSet to keep this connection's current socket in
        self._heartbeat = build_worker(dialect, Command.HEARTBEAT)
        self._codec = WorkerCodec(dialect)
        self._delay = self.settings.reconnect_initial
        self._reconnect_at = 0.0
        self._last_heard = 0.0
        self._next_heartbeat = 0.0
        self._heard = False
        self.connects = 0

    def connect(self, now: float) -> None:
        """Open a fresh socket and register with READY."""
        self.close(disconnect=False)
        sock = new_socket(self._context, zmq.DEALER)
        if self._configure is not None:
            self._configure(sock)
        sock.connect(self.broker)
        self.socket = sock
        if self._watch is not None:
            self._watch.add(sock)
        self.connects += 1
        self._last_heard = now
        self._next_heartbeat = now + self.settings.heartbeat_interval
        self._heard = False
        self._send(build_ready(self.dialect, self.service, identities=self.identities), now)

    def _send(self, frames: Frames, now: float) -> bool:
        """Send without blocking; a broker that takes nothing (its pipe is gone, say after a
        refused CURVE handshake, or full) costs this socket: reconnect later."""
        sock = self.socket
        if sock is None:
            return False
        try:
            send_frames(sock, frames, NOBLOCK)
        except zmq.Again:
            log.warning("broker %s takes no messages from %s worker: reconnecting", self.broker,
                        quoted_name(self.service))
            self._drop(now)
            return False
        if self._watch is not None:
            self._watch.touch(sock)  # a send may consume the socket's readiness signal
        return True

    def read(self, now: float) -> list[Inbound]:
        """Drain the socket: each REQUEST's (client, body, caller). DISCONNECT drops the socket."""
        requests: list[Inbound] = []
        while (sock := self.socket) is not None:
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                break
            request = self.receive(frames, now)
            if request is not None:
                requests.append(request)
            # Asking is cheaper than the exception an empty socket raises.
            if self.socket is not sock or not socket_events(sock) & POLLIN:
                break
        return requests

    def receive(self, frames: Frames, now: float) -> Inbound | None:
        """Take one message from the broker: a REQUEST's (client, body, caller), else None.

        Any message proves the broker alive; DISCONNECT drops the socket (reconnect later).
        """
        self._last_heard = now
        self._heard = True
        if self.identities:
            return self._receive_with_caller(frames, now)
        request = self._codec.request(frames)
        if request is not None:
            return request[0], request[1], None
        return self._receive_other(frames, now)

    def _receive_with_caller(self, frames: Frames, now: float) -> Inbound | None:
        """A REQUEST whose envelope may name its caller (only the broker writes there)."""
        request = self._codec.request_with_caller(frames)
        if request is None:
            return self._receive_other(frames, now)
        client, frame, body = request
        if frame is None:
            return client, body, None
        try:
            return client, body, parse_caller_frame(frame)
        except ProtocolError as exc:
            log.warning("dropped a request from the broker with a malformed caller: %s", exc)
            return None

    def _receive_other(self, frames: Frames, now: float) -> Inbound | None:
        try:
            message = parse_worker_inbound(self.dialect, frames)
        except ProtocolError as exc:
            log.warning("dropped malformed message from broker: %s", exc)
            return None
        if message.command is Command.REQUEST:
            return message.address, message.body, None
        if message.command is Command.DISCONNECT:
            if self.identities and message.body == [IDENTITY_REFUSED]:
                self._drop(now)
                raise IdentityRefusedError(
                    f"the broker at {self.broker} will not tell the {quoted_name(self.service)} "
                    "worker who sends each request: this key is not in its admin folder "
                    "(--curve-admin)")
            if self.identities:
                log.warning("broker sent DISCONNECT to %s worker, which asks who sends each "
                            "request: a CURVE broker tells only keys in its admin folder "
                            "(--curve-admin)", quoted_name(self.service))
            else:
                log.info("broker sent DISCONNECT to %s worker", quoted_name(self.service))
            self._drop(now)
        return None

    def reply(self, client: bytes, body: Sequence[bytes], *, final: bool = True,
              now: float | None = None) -> bool:
        """Send the reply for a client's request: FINAL, or (18/MDP) a PARTIAL."""
        return self._send(self._codec.reply(client, body, final=final),
                          time.monotonic() if now is None else now)

    def maintain(self, now: float) -> None:
        """Heartbeat when due; reconnect after broker silence, or when a backoff has passed."""
        if self.socket is None:
            if now >= self._reconnect_at:
                self.connect(now)
            return
        silence = now - self._last_heard
        if silence >= self.settings.heartbeat_interval * self.settings.liveness:
            log.warning("broker %s silent for %.1f s: %s worker reconnecting", self.broker,
                        silence, quoted_name(self.service))
            self._drop(now)
            return
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat_interval
            self._send(self._heartbeat, now)

    @property
    def heard(self) -> bool:
        """Heard from the broker since it last connected (registered with a live broker)."""
        return self._heard

    def alive(self, now: float) -> bool:
        """Registered and heard from the broker within its liveness; safe from other threads."""
        limit = self.settings.heartbeat_interval * self.settings.liveness
        return self.socket is not None and self._heard and now - self._last_heard < limit

    def next_deadline(self) -> float:
        """When maintain() has something to do."""
        if self.socket is None:
            return self._reconnect_at
        expiry = self._last_heard + self.settings.heartbeat_interval * self.settings.liveness
        return min(self._next_heartbeat, expiry)

    def reset(self, now: float) -> None:
        """Give up the requests in hand: DISCONNECT, then register again on a new socket."""
        self.close(disconnect=True)
        self._reconnect_at = now

    def _drop(self, now: float) -> None:
        if self._heard:
            self._delay = self.settings.reconnect_initial
        self._reconnect_at = now + self._delay
        self._delay = min(self.settings.reconnect_max, self._delay * 2)
        self.close(disconnect=False)

    def close(self, *, disconnect: bool) -> None:
        """Close the socket, optionally telling the broker first."""
        if self.socket is None:
            return
        if self._watch is not None:
            self._watch.remove(self.socket)
        if disconnect:
            with contextlib.suppress(zmq.ZMQError):
                send_frames(self.socket, build_worker(self.dialect, Command.DISCONNECT), NOBLOCK)
            self.socket.close(linger=100)
        else:
            self.socket.close(linger=0)
        self.socket = None
