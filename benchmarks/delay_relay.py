"""A TCP relay that delays every byte by a fixed time in each direction: a link's latency, in
user space, for kernels without `tc netem`.

Each connection accepted on `listen` is relayed to `target`. One thread waits for data on every
socket at once and stamps each chunk with the time it may leave (read time + delay); a second
thread sends the chunks when their time comes, oldest first, so each direction keeps its order
and its throughput (chunks in flight are not serialised behind each other's delay). The timer is
a condition variable's timed wait, which sleeps with nanosecond resolution (an epoll timeout
would round up to a millisecond).

    python benchmarks/delay_relay.py LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS
"""

from __future__ import annotations

import heapq
import itertools
import select
import socket
import sys
import threading
import time
from contextlib import suppress

_CHUNK = 256 * 1024


class DelayRelay:
    """Relays connections from `listen` to `target`, each direction delayed by `delay` s."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self._server = socket.create_server(listen)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._epoll = select.epoll()
        self._peer: dict[int, socket.socket] = {}  # a socket's fd -> the socket it relays to
        self._sockets: dict[int, socket.socket] = {}
        self._due: list[tuple[float, int, socket.socket, bytes]] = []  # (time, seq, to, data)
        self._sequence = itertools.count()
        self._ready = threading.Condition()
        self._stopped = threading.Event()
        self._epoll.register(self._server.fileno(), select.EPOLLIN)
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._write, daemon=True)]

    def start(self) -> DelayRelay:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with self._ready:
            self._ready.notify()
        with suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        near, _ = self._server.accept()
        far = socket.create_connection(self.target)
        for sock in (near, far):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets[sock.fileno()] = sock
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._peer[near.fileno()], self._peer[far.fileno()] = far, near

    def _read(self) -> None:
        server = self._server.fileno()
        while not self._stopped.is_set():
            for fd, _ in self._epoll.poll(0.2):
                if fd == server:
                    self._accept()
                    continue
                sock = self._sockets.get(fd)
                if sock is None:
                    continue
                try:
                    data = sock.recv(_CHUNK)
                except OSError:
                    data = b""
                # An empty chunk closes the other side once what is before it has left.
                self._schedule(self._peer[fd], data)
                if not data:
                    self._epoll.unregister(fd)
                    del self._sockets[fd]

    def _schedule(self, to: socket.socket, data: bytes) -> None:
        with self._ready:
            heapq.heappush(self._due, (time.monotonic() + self.delay, next(self._sequence), to,
                                       data))
            self._ready.notify()

    def _write(self) -> None:
        while not self._stopped.is_set():
            with self._ready:
                while not self._due and not self._stopped.is_set():
                    self._ready.wait()
                if self._stopped.is_set():
                    return
                left = self._due[0][0] - time.monotonic()
                if left > 0:
                    self._ready.wait(left)
                    continue
                _, _, to, data = heapq.heappop(self._due)
            try:
                if data:
                    to.sendall(data)
                else:
                    to.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the other side is gone: its reader sees it and closes this one


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.rsplit("\n\n", 1)[1].strip(), file=sys.stderr)
        return 2
    relay = DelayRelay(_address(argv[0]), _address(argv[1]), float(argv[2]) / 1000).start()
    print(f"relaying {relay.address} -> {relay.target}, {argv[2]} ms each way", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
