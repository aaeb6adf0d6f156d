"""The worker API: READY, then REQUEST / REPLY with heartbeats, reconnecting when the broker goes.

A handler takes the request body frames and returns the reply frames. In the 18/MDP dialects a
handler may instead return an iterator of frame lists: every part but the last goes out as a
PARTIAL, the last as the FINAL. Under 7/MDP the parts are joined into one REPLY.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import zmq

from titanic._zmq import NOBLOCK, Waker, new_socket, recv_frames, send_frames
from titanic.errors import ProtocolError
from titanic.protocol.mdp import (
    Command,
    Dialect,
    Frames,
    build_worker,
    build_worker_reply,
    parse_worker_inbound,
)
from titanic.settings import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    RECONNECT_INITIAL_S,
    RECONNECT_MAX_S,
)

log = logging.getLogger(__name__)

Reply = Sequence[bytes] | Iterator[Sequence[bytes]]
Handler = Callable[[Frames], Reply]


class Worker:
    """Serves one service on a broker, one request at a time, until `stop()`."""

    def __init__(
        self,
        broker: str,
        service: str | bytes,
        handler: Handler,
        *,
        dialect: Dialect = Dialect.MDP01,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        liveness: int = HEARTBEAT_LIVENESS,
        reconnect_initial: float = RECONNECT_INITIAL_S,
        reconnect_max: float = RECONNECT_MAX_S,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        configure_socket: Callable[[zmq.Socket[bytes]], None] | None = None,
    ) -> None:
        self.broker = broker
        self.service = service.encode() if isinstance(service, str) else service
        self.handler = handler
        self.dialect = dialect
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.requests_handled = 0
        self.reconnects = 0
        self._configure_socket = configure_socket
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket[bytes] | None = None
        self._waker = Waker()
        self._heartbeat = build_worker(dialect, Command.HEARTBEAT)

    def stop(self) -> None:
        """Ask `run()` to return after the request in hand; safe from threads and signals."""
        self._waker.wake()

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._waker.stopped.is_set()

    def run(self) -> None:
        """Serve requests until stop(); reconnects with backoff on silence or DISCONNECT."""
        delay = self.reconnect_initial
        try:
            while not self.stopping:
                if self._serve_connection():
                    delay = self.reconnect_initial
                if self.stopping:
                    break
                self.reconnects += 1
                log.info("worker for %r reconnecting in %.2f s", self.service, delay)
                self._sleep(delay)
                delay = min(self.reconnect_max, delay * 2)
        finally:
            self._close_socket(send_disconnect=True)
            if self._own_context:
                self._context.term()
            self._waker.close()

    def _connect(self) -> zmq.Socket[bytes]:
        self._close_socket(send_disconnect=False)
        sock = new_socket(self._context, zmq.DEALER)
        if self._configure_socket is not None:
            self._configure_socket(sock)
        sock.connect(self.broker)
        self._socket = sock
        send_frames(sock, build_worker(self.dialect, Command.READY, self.service))
        log.debug("worker for %r connected to %s", self.service, self.broker)
        return sock

    def _close_socket(self, *, send_disconnect: bool) -> None:
        if self._socket is None:
            return
        if send_disconnect:
            try:
                send_frames(self._socket, build_worker(self.dialect, Command.DISCONNECT),
                                            NOBLOCK)
            except zmq.ZMQError:
                pass
            self._socket.close(linger=100)
        else:
            self._socket.close(linger=0)
        self._socket = None

    def _serve_connection(self) -> bool:
        """Serve on one socket until the broker goes silent, disconnects us, or stop().

        Returns True if the broker answered at least once on this connection.
        """
        sock = self._connect()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._waker.fileno(), zmq.POLLIN)
        interval = self.heartbeat_interval
        silence_limit = interval * self.liveness
        heard = False
        last_heard = time.monotonic()
        next_heartbeat = last_heard + interval
        while not self.stopping:
            timeout = max(0.0, min(next_heartbeat, last_heard + silence_limit) - time.monotonic())
            events = dict(poller.poll(int(timeout * 1000) + 1))
            now = time.monotonic()
            if sock in events:
                heard = True
                last_heard = now
                if not self._drain(sock):
                    return heard
                now = time.monotonic()
            elif now - last_heard >= silence_limit:
                log.warning("broker %s silent for %.1f s: reconnecting", self.broker,
                            now - last_heard)
                return heard
            if now >= next_heartbeat:
                send_frames(sock, self._heartbeat)
                next_heartbeat = now + interval
        return heard

    def _drain(self, sock: zmq.Socket[bytes]) -> bool:
        """Handle every waiting message; False when the broker sent DISCONNECT."""
        while True:
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return True
            try:
                message = parse_worker_inbound(self.dialect, frames)
            except ProtocolError as exc:
                log.warning("dropped malformed message from broker: %s", exc)
                continue
            if message.command is Command.DISCONNECT:
                log.info("broker sent DISCONNECT to worker for %r", self.service)
                return False
            if message.command is Command.REQUEST:
                if not self._serve_request(sock, message.address, message.body):
                    return False

    def _serve_request(self, sock: zmq.Socket[bytes], client: bytes, body: Frames) -> bool:
        """Run the handler and send its reply; False (reconnect) if the handler raised."""
        try:
            reply = self.handler(body)
            if isinstance(reply, (list, tuple)):
                send_frames(sock, build_worker_reply(self.dialect, client, reply))
            else:
                self._send_parts(sock, client, reply)  # type: ignore[arg-type]
        except Exception:
            log.exception("handler for %r failed; re-registering so the client can retry",
                          self.service)
            send_frames(sock, build_worker(self.dialect, Command.DISCONNECT))
            return False
        self.requests_handled += 1
        return True

    def _send_parts(self, sock: zmq.Socket[bytes], client: bytes,
                    parts: Iterable[Sequence[bytes]]) -> None:
        joined: Frames = []
        previous: Sequence[bytes] | None = None
        for part in parts:
            if previous is not None:
                if self.dialect is Dialect.MDP01:
                    joined.extend(previous)
                else:
                    send_frames(sock, build_worker_reply(self.dialect, client, previous,
                                                           final=False))
            previous = part
        joined.extend(previous or [])
        send_frames(sock, build_worker_reply(self.dialect, client, joined))

    def _sleep(self, seconds: float) -> None:
        """Wait, but wake at once on stop()."""
        poller = zmq.Poller()
        poller.register(self._waker.fileno(), zmq.POLLIN)
        poller.poll(int(seconds * 1000))


def echo_handler(frames: Frames) -> Frames:
    """The demo service: the reply is the request."""
    return frames
