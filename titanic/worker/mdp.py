"""The worker API: READY, then REQUEST / REPLY with heartbeats, reconnecting when the broker goes.

A handler takes the request body frames and returns the reply frames (`str` frames are sent as
UTF-8). In the 18/MDP dialects a handler may instead return an iterator of frame lists: every part
but the last goes out as a PARTIAL, the last as the FINAL. Under 7/MDP the parts are joined into
one REPLY. A handler that raises is answered with a failure report (titanic.protocol.failure)
carrying the exception and its traceback: the dispatcher retries the request after a backoff, or
fails it at once for a PermanentError.

Given several brokers, a worker registers with each on a connection of its own, which
heartbeats and reconnects on its own; requests from all of them are served one at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import zmq

from titanic._zmq import SocketHook, SocketSet, recv_frames
from titanic.errors import PermanentError
from titanic.logs import quoted_name
from titanic.protocol.failure import (
    FailureKind,
    build_failure,
    describe_exception,
    format_traceback,
)
from titanic.protocol.mdp import Dialect, Frames
from titanic.settings import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    RECONNECT_INITIAL_S,
    RECONNECT_MAX_S,
    broker_list,
)
from titanic.worker.connection import ConnectionSettings, WorkerConnection

log = logging.getLogger("titanic.worker")

#: Longest a worker waits in recv before it looks whether stop() was called, in seconds.
STOP_CHECK_S = 0.1

#: Modules whose calls lead to a handler's: left out of the tracebacks sent to clients.
_OWN_CALLS = frozenset({__name__, "titanic.worker.group", "titanic.worker.tasks",
                        "titanic.worker.freelance"})

Reply = Sequence[bytes | str] | Iterator[Sequence[bytes | str]]
Handler = Callable[[Frames], Reply]


class Worker:
    """Serves one service on one or several brokers, one request at a time, until `stop()`."""

    def __init__(
        self,
        broker: str | Sequence[str],
        service: str | bytes,
        handler: Handler,
        *,
        dialect: Dialect = Dialect.MDP01,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        liveness: int = HEARTBEAT_LIVENESS,
        reconnect_initial: float = RECONNECT_INITIAL_S,
        reconnect_max: float = RECONNECT_MAX_S,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        configure_socket: SocketHook | None = None,
    ) -> None:
        self.brokers = broker_list(broker)
        self.service = service.encode() if isinstance(service, str) else service
        self.handler = handler
        self.dialect = dialect
        self.requests_handled = 0
        self.requests_failed = 0
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._stopped = threading.Event()
        settings = ConnectionSettings(heartbeat_interval, liveness, reconnect_initial,
                                      reconnect_max)
        # One broker: the loop blocks in recv on its socket; several: it waits on a SocketSet.
        self._watch = SocketSet() if len(self.brokers) > 1 else None
        self.connections = [
            WorkerConnection(self._context, endpoint, self.service, dialect=dialect,
                             settings=settings, configure_socket=configure_socket,
                             watch=self._watch)
            for endpoint in self.brokers]
        self.connection = self.connections[0]

    @property
    def broker(self) -> str:
        """The first broker's endpoint."""
        return self.brokers[0]

    @property
    def reconnects(self) -> int:
        """How many times the worker registered again after its first READY, all brokers
        together."""
        return sum(max(0, connection.connects - 1) for connection in self.connections)

    def stop(self) -> None:
        """Ask `run()` to return after the request in hand; safe from threads and signals."""
        self._stopped.set()

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopped.is_set()

    def run(self) -> None:
        """Serve requests until stop(); reconnects with backoff on silence or DISCONNECT.

        With one broker the loop blocks in recv (no poll per message): a receive timeout bounds
        each wait by the next heartbeat or reconnect deadline, and by STOP_CHECK_S, so stop()
        (from another thread or a signal handler) takes effect within that. With several it
        waits on all their sockets at once, bounded the same way.
        """
        now = time.monotonic()
        for connection in self.connections:
            connection.connect(now)
        try:
            if self._watch is None:
                self._run_one(self.connection)
            else:
                self._run_many(self._watch)
        finally:
            for connection in self.connections:
                connection.close(disconnect=True)
            if self._watch is not None:
                self._watch.close()
            if self._own_context:
                self._context.term()

    def _run_one(self, connection: WorkerConnection) -> None:
        timeout_set: tuple[zmq.Socket[bytes] | None, int] = (None, 0)  # socket, RCVTIMEO ms
        while not self.stopping:
            sock = connection.socket
            now = time.monotonic()
            wait = min(STOP_CHECK_S, max(0.0, connection.next_deadline() - now))
            if sock is None:
                self._stopped.wait(wait)
                connection.maintain(time.monotonic())
                continue
            wait_ms = int(wait * 1000) + 1
            if timeout_set != (sock, wait_ms):
                sock.rcvtimeo = wait_ms
                timeout_set = (sock, wait_ms)
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                frames = None
            now = time.monotonic()
            if frames is not None:
                request = connection.receive(frames, now)
                if request is not None and not self.stopping:
                    self._serve(connection, request[0], request[1], now)
            if now >= connection.next_deadline():
                connection.maintain(now)

    def _run_many(self, watch: SocketSet) -> None:
        while not self.stopping:
            deadline = min(connection.next_deadline() for connection in self.connections)
            ready, _ = watch.wait(min(STOP_CHECK_S, max(0.0, deadline - time.monotonic())))
            readable = set(ready)
            for connection in self.connections:
                if connection.socket is None or connection.socket not in readable:
                    continue
                for client, body, _ in connection.read(time.monotonic()):
                    if self.stopping:
                        break
                    self._serve(connection, client, body, time.monotonic())
            now = time.monotonic()
            for connection in self.connections:
                if now >= connection.next_deadline():
                    connection.maintain(now)

    def _serve(self, connection: WorkerConnection, client: bytes, body: Frames,
               now: float) -> None:
        try:
            reply = self.handler(body)
            if isinstance(reply, Iterator):
                self._send_parts(connection, client, reply)
            else:
                connection.reply(client, as_frames(reply))
        except Exception as exc:  # noqa: BLE001 - whatever the handler raises is its failure report
            self._report_failure(connection, client, exc, now)
            return
        self.requests_handled += 1

    def _report_failure(self, connection: WorkerConnection, client: bytes, exc: Exception,
                        now: float) -> None:
        """Answer with a failure report; if even that cannot be sent, register afresh."""
        self.requests_failed += 1
        report = failure_frames(self.service, exc)
        try:
            connection.reply(client, report)
        except Exception:
            log.exception("cannot report the failure; re-registering")
            connection.reset(now)

    def _send_parts(self, connection: WorkerConnection, client: bytes,
                    parts: Iterable[Sequence[bytes | str]]) -> None:
        """PARTIAL for every part but the last (7/MDP: all parts joined), then FINAL."""
        joined: Frames = []
        previous: Frames | None = None
        for part in parts:
            if previous is not None:
                if self.dialect is Dialect.MDP01:
                    joined.extend(previous)
                else:
                    connection.reply(client, previous, final=False)
            previous = as_frames(part)
        joined.extend(previous or [])
        connection.reply(client, joined)


def failure_frames(service: bytes, exc: Exception) -> Frames:
    """The failure report answering a request whose handler raised `exc` (logged here)."""
    permanent = isinstance(exc, PermanentError)
    reason = exc.__cause__ if permanent and exc.__cause__ is not None else exc
    error = describe_exception(reason)
    log.error("handler for %s failed (%s): %s", quoted_name(service),
              "permanent" if permanent else "will be retried", error, exc_info=exc)
    kind = FailureKind.PERMANENT if permanent else FailureKind.RETRY
    return build_failure(kind, error, format_traceback(reason, skip=_OWN_CALLS))


def reply_frames(reply: Reply) -> Frames:
    """A handler's answer as one reply's frames: an iterator's parts joined, as under 7/MDP."""
    if isinstance(reply, Iterator):
        return [frame for part in reply for frame in as_frames(part)]
    return as_frames(reply)


def as_frames(value: object) -> Frames:
    """A handler's answer as frames: bytes or str is one frame, a sequence of them several,
    None none; str is sent as UTF-8. TypeError for anything else."""
    if value is None:
        return []
    if isinstance(value, bytes | str):
        value = [value]
    if not isinstance(value, Sequence):
        raise TypeError(f"a handler must return bytes, str or a list of them, not "
                        f"{type(value).__name__}")
    frames: Frames = []
    for item in value:
        if isinstance(item, str):
            frames.append(item.encode("utf-8"))
        elif isinstance(item, bytes | bytearray | memoryview):
            frames.append(bytes(item))
        else:
            raise TypeError(f"a reply frame must be bytes or str, not {type(item).__name__}")
    return frames


def echo_handler(frames: Frames) -> Frames:
    """The demo service: the reply is the request."""
    return frames
