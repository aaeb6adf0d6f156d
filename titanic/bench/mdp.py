"""Majordomo round-trip benchmark: our broker beside majortomo's, same client and workers.

    python -m titanic.bench.mdp [--requests N] [--depth 32] [--size 100]

Brokers and echo workers run as subprocesses on loopback; the client runs here. The same client
and worker code (ours) is used against every broker, each speaking the broker's dialect, so the
broker is the only thing that differs between rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import zmq

from titanic._zmq import SocketHook
from titanic.bench import device
from titanic.bench.common import (
    Result,
    format_table,
    free_port,
    spawn,
    stop_all,
    timed_pipeline,
    titanic_command,
)
from titanic.client import Client, PipelinedClient
from titanic.errors import TitanicTimeoutError
from titanic.protocol.mdp import Dialect

SERVICE = b"echo"


BROKERS: dict[str, tuple[Callable[[str], list[str]], Dialect]] = {
    "titanic (7/MDP)": (lambda ep: titanic_command("broker", "--bind", ep), Dialect.MDP01),
    "titanic (majortomo dialect)": (lambda ep: titanic_command("broker", "--bind", ep),
                                    Dialect.MAJORTOMO),
    "majortomo 0.2.0": (lambda ep: [sys.executable, "-P", "-m", "majortomo.broker", "-b", ep],
                        Dialect.MAJORTOMO),
}
DIALECT_FLAG = {Dialect.MDP01: "7", Dialect.MDP02: "18", Dialect.MAJORTOMO: "majortomo"}


@contextmanager
def running_broker(command: Callable[[str], list[str]], dialect: Dialect,
                   workers: int) -> Iterator[str]:
    """A broker with `workers` echo workers, ready to serve; yields its endpoint."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    processes = [spawn(command(endpoint))]
    try:
        processes.extend(spawn(titanic_command("worker", "echo", "--broker", endpoint,
                                               "--mdp", DIALECT_FLAG[dialect]))
                         for _ in range(workers))
        wait_until_served(endpoint, dialect, workers)
        yield endpoint
    finally:
        stop_all(processes)


def wait_until_served(endpoint: str, dialect: Dialect, workers: int,
                      deadline_s: float = 20, *,
                      configure_socket: SocketHook | None = None) -> None:
    """Block until `workers` requests in flight at once all come back (every worker is up)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with PipelinedClient(endpoint, depth=workers, dialect=dialect, timeout=0.5,
                                 retries=0, configure_socket=configure_socket) as client:
                client.request_many([(SERVICE, [b"warm-up"])] * workers * 4)
            return
        except TitanicTimeoutError:
            continue
    raise RuntimeError(f"echo workers at {endpoint} did not come up in {deadline_s} s")


def measure_sync(endpoint: str, dialect: Dialect, requests: int, body: bytes, *,
                 new_socket: bool = False,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None) -> Result:
    """One client, one request at a time; optionally a new client socket per request."""
    latencies: list[float] = []
    own_context = context is None
    context = context or zmq.Context()
    client = Client(endpoint, dialect=dialect, timeout=5, retries=0, context=context,
                    configure_socket=configure_socket)
    started = time.perf_counter()
    try:
        for _ in range(requests):
            t0 = time.perf_counter()
            if new_socket:
                with Client(endpoint, dialect=dialect, timeout=5, retries=0, context=context,
                            configure_socket=configure_socket) as once:
                    once.request(SERVICE, body)
            else:
                client.request(SERVICE, body)
            latencies.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
    finally:
        client.close()
        if own_context:
            context.term()
    name = "sync, new socket per call" if new_socket else "sync, socket kept"
    return Result(name, requests, seconds, latencies)


def measure_pipelined(endpoint: str, dialect: Dialect, requests: int, body: bytes,
                      depth: int, *,
                      context: zmq.Context[zmq.Socket[bytes]] | None = None,
                      configure_socket: SocketHook | None = None) -> Result:
    """`depth` requests in flight at once."""
    with PipelinedClient(endpoint, depth=depth, dialect=dialect, timeout=10, retries=0,
                         context=context, configure_socket=configure_socket) as client:
        return timed_pipeline(client.run, SERVICE, body, requests, depth)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every broker through the same loads and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--sync-requests", type=int, default=5_000)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--size", type=int, default=100, help="body bytes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--broker", action="append", choices=sorted(BROKERS),
                        help="only these brokers (repeatable)")
    args = parser.parse_args(argv)
    body = b"x" * args.size
    rows: list[tuple[str, Result]] = []
    for name in args.broker or list(BROKERS):
        command, dialect = BROKERS[name]
        with running_broker(command, dialect, args.workers) as endpoint:
            rows.append((name, measure_sync(endpoint, dialect, args.sync_requests, body)))
            rows.append((name, measure_pipelined(endpoint, dialect, args.requests, body,
                                                 args.depth)))
        print(format_table(rows[-2:]).split("\n", 1)[1], file=sys.stderr, flush=True)
    if not args.broker:
        with device.running_device(args.workers) as frontend:
            name = "bare zmq.proxy device"
            rows.append((name, device.measure(frontend, args.sync_requests, body, 1)))
            rows.append((name, device.measure(frontend, args.requests, body, args.depth)))
    print(f"{args.size}-byte bodies, {args.workers} echo workers, loopback tcp")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
