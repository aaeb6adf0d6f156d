"""Freelance (10/FLP) round trips: a client calling echo servers directly, no broker between.

    python -m titanic.bench.flp [--servers 2] [--requests N] [--depth 32] [--size 100]
    python -m titanic.bench.flp --server tcp://HOST:PORT [--server ...]

Without --server it starts `--servers` processes of `titanic worker echo --bind` on loopback and
measures one request at a time and `--depth` in flight with one FreelanceClient. With --server
it measures servers already running (another machine's: the remote figures), each started as
`titanic worker echo --bind tcp://*:PORT --advertise tcp://HOST:PORT`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from titanic.bench.common import (
    Result,
    format_table,
    free_port,
    spawn,
    stop_all,
    timed_pipeline,
    titanic_command,
)
from titanic.client.freelance import FreelanceClient
from titanic.errors import TitanicTimeoutError

SERVICE = b"echo"


@contextmanager
def running_servers(count: int) -> Iterator[list[str]]:
    """`count` echo servers (`titanic worker echo --bind`), answering; yields their endpoints."""
    endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(count)]
    processes = [spawn(titanic_command("worker", "echo", "--bind", endpoint))
                 for endpoint in endpoints]
    try:
        wait_until_served(endpoints)
        yield endpoints
    finally:
        stop_all(processes)


def wait_until_served(endpoints: Sequence[str], deadline_s: float = 20) -> None:
    """Block until every server answers."""
    deadline = time.monotonic() + deadline_s
    with FreelanceClient(endpoints, timeout=0.5) as client:
        while time.monotonic() < deadline:
            try:
                client.request(SERVICE, b"warm-up")
            except TitanicTimeoutError:
                continue
            client.poll(0.05)
            if len(client.alive()) == len(endpoints):
                return
    raise RuntimeError(f"echo servers at {', '.join(endpoints)} did not come up in "
                       f"{deadline_s} s")


def measure_sync(endpoints: Sequence[str], requests: int, body: bytes) -> Result:
    """One client, one request at a time."""
    latencies: list[float] = []
    with FreelanceClient(endpoints, timeout=5) as client:
        client.request(SERVICE, body)
        client.poll(0.3)  # every server answers its PING before the clock starts
        started = time.perf_counter()
        for _ in range(requests):
            t0 = time.perf_counter()
            client.request(SERVICE, body)
            latencies.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
    return Result("sync, socket kept", requests, seconds, latencies)


def measure_pipelined(endpoints: Sequence[str], requests: int, body: bytes,
                      depth: int) -> Result:
    """`depth` requests in flight at once on one client."""
    with FreelanceClient(endpoints, timeout=10) as client:
        client.request(SERVICE, body)
        client.poll(0.3)
        return timed_pipeline(lambda requests: client.map(requests, depth=depth), SERVICE,
                              body, requests, depth)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--sync-requests", type=int, default=3_000)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--size", type=int, default=100, help="body bytes")
    parser.add_argument("--servers", type=int, default=2, help="echo servers started")
    parser.add_argument("--server", action="append", default=[],
                        help="a running server's endpoint instead (repeatable)")
    args = parser.parse_args(argv)
    body = b"x" * args.size
    if args.server:
        target = "brokerless, given servers"
        endpoints: list[str] = args.server
        wait_until_served(endpoints)
        rows = [(target, measure_sync(endpoints, args.sync_requests, body)),
                (target, measure_pipelined(endpoints, args.requests, body, args.depth))]
    else:
        target = "brokerless, tcp"
        with running_servers(args.servers) as endpoints:
            rows = [(target, measure_sync(endpoints, args.sync_requests, body)),
                    (target, measure_pipelined(endpoints, args.requests, body, args.depth))]
    print(f"{args.size}-byte bodies, {len(endpoints)} echo servers")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
