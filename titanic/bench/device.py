"""The floor a broker hop can reach: a bare zmq.proxy ROUTER/DEALER device with REP echo workers.

    python -m titanic.bench.device proxy FRONTEND BACKEND
    python -m titanic.bench.device echo BACKEND

Clients talk to the device with DEALER sockets, sending an empty delimiter and the body; the
device spreads requests over the REP workers round-robin, with no service names, heartbeats or
recovery. What a Majordomo broker adds on top of this is what the comparison measures.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import zmq

from titanic._zmq import recv_frames, send_frames
from titanic.bench.common import Result, free_port, spawn, stop_all


def run_proxy(frontend: str, backend: str) -> None:
    """ROUTER in front, DEALER behind, zmq.proxy between them, until SIGTERM."""
    context = zmq.Context()
    front = context.socket(zmq.ROUTER)
    back = context.socket(zmq.DEALER)
    front.linger = back.linger = 0
    front.bind(frontend)
    back.bind(backend)
    signal.signal(signal.SIGTERM, lambda *_: context.term())
    try:
        zmq.proxy(front, back)
    except zmq.ContextTerminated:
        pass
    finally:
        front.close()
        back.close()


def run_echo(backend: str) -> None:
    """A REP socket that answers every request with itself."""
    context = zmq.Context()
    sock = context.socket(zmq.REP)
    sock.linger = 0
    sock.connect(backend)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        send_frames(sock, recv_frames(sock))


@contextmanager
def running_device(workers: int) -> Iterator[str]:
    """A device with `workers` REP echo workers; yields the frontend endpoint."""
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    module = [sys.executable, "-P", "-m", "titanic.bench.device"]
    processes = [spawn([*module, "proxy", frontend, backend])]
    processes += [spawn([*module, "echo", backend]) for _ in range(workers)]
    try:
        _wait_until_echoing(frontend)
        yield frontend
    finally:
        stop_all(processes)


def _wait_until_echoing(frontend: str, deadline_s: float = 20) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(frontend)
        send_frames(sock, [b"", b"ping"])
        ready = sock.poll(500)
        sock.close()
        if ready:
            return
    raise RuntimeError(f"device at {frontend} did not echo in {deadline_s} s")


def measure(frontend: str, requests: int, body: bytes, depth: int) -> Result:
    """`depth` DEALER sockets, one request in flight on each (1: synchronous)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sockets = []
    poller = zmq.Poller()
    for _ in range(depth):
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(frontend)
        poller.register(sock, zmq.POLLIN)
        sockets.append(sock)
    sent_at: dict[zmq.Socket[bytes], float] = {}
    latencies: list[float] = []
    sent = 0
    started = time.perf_counter()
    try:
        for sock in sockets[:requests]:
            sent_at[sock] = time.perf_counter()
            send_frames(sock, [b"", body])
            sent += 1
        while len(latencies) < requests:
            events = poller.poll(10_000)
            if not events:
                raise RuntimeError(f"device at {frontend} stopped answering")
            for sock, _ in events:
                recv_frames(sock)
                now = time.perf_counter()
                latencies.append(now - sent_at[sock])
                if sent < requests:
                    sent_at[sock] = now
                    send_frames(sock, [b"", body])
                    sent += 1
        seconds = time.perf_counter() - started
    finally:
        for sock in sockets:
            sock.close()
    name = "sync, socket kept" if depth == 1 else f"pipelined, {depth} in flight"
    return Result(name, requests, seconds, latencies)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a device part: `proxy FRONTEND BACKEND` or `echo BACKEND`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["proxy"] and len(args) == 3:
        run_proxy(args[1], args[2])
    elif args[:1] == ["echo"] and len(args) == 2:
        run_echo(args[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
