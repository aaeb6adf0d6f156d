"""Socket plumbing shared by the broker, client, worker and dispatcher."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import zmq

#: Linger for sockets closed during normal operation: unsent messages are dropped at once.
NO_LINGER = 0

# pyzmq's sugar send_multipart/recv_multipart combine IntFlag enums for every frame, which costs
# as much as the I/O itself for small messages; these call the Cython socket methods with ints.
_base_send = zmq.backend.Socket.send
_base_recv = zmq.backend.Socket.recv
_SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)


def send_frames(sock: zmq.Socket[bytes], frames: list[bytes], flags: int = 0) -> None:
    """send_multipart for bytes frames, without pyzmq's per-frame enum arithmetic."""
    more = flags | _SNDMORE
    last = len(frames) - 1
    for index in range(last):
        _base_send(sock, frames[index], more)
    _base_send(sock, frames[last], flags)


def recv_frames(sock: zmq.Socket[bytes], flags: int = 0) -> list[bytes]:
    """recv_multipart returning bytes; a Frame's `more` is cheaper than getsockopt(RCVMORE)."""
    frame = _base_recv(sock, flags, False)
    parts: list[bytes] = [frame.bytes]
    while frame.more:
        frame = _base_recv(sock, flags, False)
        parts.append(frame.bytes)
    return parts


def new_socket(context: zmq.Context[zmq.Socket[bytes]], kind: int, *,
               max_message_size: int | None = None) -> zmq.Socket[bytes]:
    """A socket with linger 0 (closing never hangs), optionally limited in message size."""
    sock = context.socket(kind)
    sock.linger = NO_LINGER
    if max_message_size is not None and max_message_size > 0:
        sock.maxmsgsize = max_message_size
    return sock


class Doorbell:
    """A self-pipe a zmq poll loop can watch: `ring()` is safe from threads and signal handlers."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        """The descriptor to register with zmq.Poller."""
        return self._reader.fileno()

    def ring(self) -> None:
        """Make the descriptor readable."""
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # the pipe is full (already rung) or closed (loop gone)

    def drain(self) -> None:
        """Empty the pipe after a wake-up."""
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        """Release both ends."""
        self._reader.close()
        self._writer.close()


class Waker(Doorbell):
    """A doorbell that also records that the loop was asked to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = threading.Event()

    def wake(self) -> None:
        """Mark stopped and interrupt the poll."""
        self.stopped.set()
        self.ring()


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call `stop` on SIGINT/SIGTERM while the block runs (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, frame: FrameType | None) -> None:
        stop()

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
