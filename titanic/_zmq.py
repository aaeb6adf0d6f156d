"""Socket plumbing shared by the broker, client, worker and dispatcher."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import zmq

#: Called on every new socket before it connects (CURVE keys, options): the one hook type.
SocketHook = Callable[[zmq.Socket[bytes]], None]

#: Linger for sockets closed during normal operation: unsent messages are dropped at once.
NO_LINGER = 0

# pyzmq's sugar send_multipart/recv_multipart combine IntFlag enums for every frame, which costs
# as much as the I/O itself for small messages; these call the Cython socket methods with ints.
_base_send = zmq.backend.Socket.send
_base_recv = zmq.backend.Socket.recv
_SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
POLLIN = int(zmq.POLLIN)
_base_get = zmq.backend.Socket.get
_EVENTS = int(zmq.EVENTS)
_FD = int(zmq.FD)


def socket_events(sock: zmq.Socket[bytes]) -> int:
    """The socket's ZMQ_EVENTS bits (processing its pending commands)."""
    return int(_base_get(sock, _EVENTS))


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


def recv_frames_from(sock: zmq.Socket[bytes], flags: int = 0) -> tuple[list[bytes], bytes]:
    """recv_frames, and the message's User-Id as ZAP set it (a CURVE peer's Z85 public key)."""
    frame = _base_recv(sock, flags, False)
    user = frame.get("User-Id")
    parts: list[bytes] = [frame.bytes]
    while frame.more:
        frame = _base_recv(sock, flags, False)
        parts.append(frame.bytes)
    return parts, user.encode() if isinstance(user, str) else bytes(user)


def new_socket(context: zmq.Context[zmq.Socket[bytes]], kind: int, *,
               max_message_size: int | None = None) -> zmq.Socket[bytes]:
    """A socket with linger 0 (closing never hangs), optionally limited in message size."""
    sock = context.socket(kind)
    sock.linger = NO_LINGER
    if max_message_size is not None and max_message_size > 0:
        sock.maxmsgsize = max_message_size
    return sock


class SocketSet:
    """Waits on many zmq sockets (and plain descriptors) with one epoll call.

    zmq.Poller asks every registered socket for its state at each call, a system call each:
    with 64 sockets that costs more than the messages. Here the kernel watches each socket's
    ZMQ_FD and only sockets whose descriptor fired are asked. A zmq socket's descriptor only
    signals that its state may have changed, and any send or receive on it may consume that
    signal, so a socket that was just used is looked at again at the next wait: call `touch()`
    after sending on a socket, and every socket `wait()` returns is looked at again next time.

    A socket whose descriptor fired is returned without asking it for ZMQ_EVENTS: nearly always
    a message woke it, and the receive that reads it processes the socket's pending commands
    itself (the same system calls), so one call into libzmq per message is saved. A returned
    socket may have nothing to read: receive with NOBLOCK.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._sockets: dict[int, zmq.Socket[bytes]] = {}
        self._plain: set[int] = set()
        self._touched: set[zmq.Socket[bytes]] = set()

    def add(self, sock: zmq.Socket[bytes]) -> None:
        """Watch a zmq socket for incoming messages."""
        fd = int(_base_get(sock, _FD))
        self._sockets[fd] = sock
        self._epoll.register(fd, select.EPOLLIN)
        self._touched.add(sock)

    def remove(self, sock: zmq.Socket[bytes]) -> None:
        """Stop watching a zmq socket (before closing it)."""
        fd = int(_base_get(sock, _FD))
        if self._sockets.pop(fd, None) is not None:
            self._epoll.unregister(fd)
        self._touched.discard(sock)

    def add_fd(self, fd: int) -> None:
        """Watch a plain descriptor (a Waker): `wait()` returns it when it is readable."""
        self._plain.add(fd)
        self._epoll.register(fd, select.EPOLLIN)

    def remove_fd(self, fd: int) -> None:
        """Stop watching a plain descriptor."""
        if fd in self._plain:
            self._plain.discard(fd)
            self._epoll.unregister(fd)

    def touch(self, sock: zmq.Socket[bytes]) -> None:
        """Look at this socket at the next wait (after sending on it)."""
        self._touched.add(sock)

    def wait(self, timeout: float | None) -> tuple[list[zmq.Socket[bytes]], bool]:
        """Sockets that may have a message waiting, and whether a plain descriptor is readable.

        Blocks up to `timeout` seconds (None: until something is ready); returns early with
        whatever is ready.
        """
        ready: dict[zmq.Socket[bytes], None] = {}  # insertion-ordered, no duplicates
        deadline = None if timeout is None else time.monotonic() + timeout
        touched, self._touched = self._touched, set()
        for sock in touched:
            if socket_events(sock) & POLLIN:
                ready[sock] = None
        wait: float = 0.0 if ready else -1.0 if deadline is None else timeout or 0.0
        while True:
            plain = False
            for fd, _ in self._epoll.poll(wait):
                found = self._sockets.get(fd)
                if found is None:
                    plain = plain or fd in self._plain
                else:
                    ready[found] = None  # its receive processes what fired (see above)
            if ready or plain:
                break
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
        self._touched.update(ready)
        return list(ready), plain

    def close(self) -> None:
        """Release the epoll descriptor."""
        self._epoll.close()


class Waker:
    """A self-pipe a poll loop can watch, and a flag: `wake()` marks the loop stopped and makes
    the descriptor readable; safe from other threads and signal handlers."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self.stopped = threading.Event()

    def fileno(self) -> int:
        """The descriptor to watch."""
        return self._reader.fileno()

    def wake(self) -> None:
        """Mark stopped and interrupt the poll."""
        self.stopped.set()
        with contextlib.suppress(OSError):  # the pipe is full (already woken) or closed
            self._writer.send(b"\0")

    def close(self) -> None:
        """Release both ends."""
        self._reader.close()
        self._writer.close()


class LogBudget:
    """At most `lines` log lines per `window` seconds; the rest are only counted."""

    def __init__(self, lines: int = 10, window: float = 10.0) -> None:
        self.lines = lines
        self.window = window
        self._window_end = 0.0
        self._used = 0
        self.suppressed = 0

    def allow(self) -> bool:
        """True if a line may be logged now (counts it); False if over budget."""
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end = now + self.window
            self._used = 0
        if self._used < self.lines:
            self._used += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        """Lines suppressed since the last call."""
        count, self.suppressed = self.suppressed, 0
        return count


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call `stop` on SIGINT/SIGTERM while the block runs (main thread only; else a no-op).

    `stop` runs on a thread of its own, woken through a pipe: the handler itself only writes a
    byte. A handler that called `stop` directly could deadlock: it runs in the main thread
    between two bytecodes, perhaps while that thread holds the very lock `stop` takes (an
    Event's, in the middle of its wait()).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()

    def _relay() -> None:
        while os.read(read_end, 1):
            stop()

    relay = threading.Thread(target=_relay, name="titanic-signals", daemon=True)
    relay.start()

    def _handler(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            os.write(write_end, b"s")

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(write_end)  # the relay reads the end of the pipe and returns
        relay.join(5.0)
        os.close(read_end)
