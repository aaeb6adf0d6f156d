"""Titanic benchmark: requests forwarded to another site against local end-to-end requests.

    python -m titanic.bench.sites [--requests N] [--depth 32] [--workers 2] [--rounds 3]

Two sites run as subprocesses on loopback, each a broker with its dispatcher in it
(`titanic broker --titanic`) on a SQLite file of its own: the far site has the echo workers,
the origin none and the far site as its peer. Measured in turn, `--rounds` times: requests
submitted at the far site and run there (local end to end), and the same number submitted at
the origin, forwarded to the far site and their replies stored back at the origin (forwarded
end to end); each timed until every one is done in its site's database. Beside each rate, the
CPU time each site's broker took per request, in microseconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from titanic.bench.common import (
    Result,
    cpu_seconds,
    free_port,
    spawn,
    stop_all,
    titanic_command,
)
from titanic.bench.tsp import measure_end_to_end, wait_for_titanic
from titanic.client import Client
from titanic.protocol import tsp


@dataclass(frozen=True)
class TwoSites:
    """The far site and the origin: endpoints, database URLs, the brokers' process ids."""

    far: str
    origin: str
    far_db: str
    origin_db: str
    far_pid: int
    origin_pid: int


@contextmanager
def two_sites(folder: Path, workers: int, sync: str) -> Iterator[TwoSites]:
    """The far site (with `workers` echo workers) and the origin joined to it."""
    far, origin = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    far_db, origin_db = (f"sqlite:///{folder / name}" for name in ("far.db", "origin.db"))
    common = ["--sqlite-synchronous", sync]
    processes = [spawn(titanic_command("broker", "--bind", far, "--titanic", "--db", far_db,
                                       "--site", "far", *common))]
    try:
        processes += [spawn(titanic_command("worker", "echo", "--broker", far))
                      for _ in range(workers)]
        processes.append(spawn(titanic_command(
            "broker", "--bind", origin, "--titanic", "--db", origin_db, "--site", "origin",
            "--peer", f"far={far}", *common)))
        wait_for_titanic(far)
        wait_for_titanic(origin)
        _wait_forwarding(origin)
        yield TwoSites(far, origin, far_db, origin_db, processes[0].pid, processes[-1].pid)
    finally:
        stop_all(processes)


def _wait_forwarding(origin: str, deadline_s: float = 30.0) -> None:
    """Until a request submitted at the origin comes back from the far site."""
    deadline = time.monotonic() + deadline_s
    with Client(origin, timeout=2, retries=0) as client:
        answer = client.request(tsp.REQUEST_SERVICE, b"echo", b"ready?")
        request_id = answer[1]
        while time.monotonic() < deadline:
            if client.request(tsp.REPLY_SERVICE, request_id)[0] == b"200":
                return
            time.sleep(0.05)
    raise RuntimeError(f"nothing forwarded from {origin} within {deadline_s} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table, and the forwarded rate as a share of the local one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--size", type=int, default=100, help="body bytes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default="FULL")
    args = parser.parse_args(argv)
    body = b"x" * args.size
    rows: list[tuple[str, Result, list[float]]] = []
    with tempfile.TemporaryDirectory() as folder, two_sites(
            Path(folder), args.workers, args.sqlite_synchronous) as sites:
        for _ in range(args.rounds):
            for site, endpoint, db_url in (("local", sites.far, sites.far_db),
                                           ("forwarded", sites.origin, sites.origin_db)):
                before = [cpu_seconds(pid) for pid in (sites.far_pid, sites.origin_pid)]
                result = measure_end_to_end(endpoint, db_url, args.requests, body, args.depth)
                used = [cpu_seconds(pid) - then for pid, then
                        in zip((sites.far_pid, sites.origin_pid), before, strict=True)]
                rows.append((site, result, [seconds / args.requests * 1e6 for seconds in used]))
    print(f"{args.size}-byte bodies, {args.workers} echo workers at the far site, SQLite "
          f"synchronous={args.sqlite_synchronous} at both sites")
    print(f"{'requests':10} {'load':28} {'req/s':>7}  CPU us/request: {'far':>5} {'origin':>7}")
    for site, result, cpu in rows:
        print(f"{site:10} {result.name:28} {result.rate:7.0f}  {'':15} {cpu[0]:5.0f} "
              f"{cpu[1]:7.0f}")
    local_rates = [result.rate for site, result, _ in rows if site == "local"]
    forwarded_rates = [result.rate for site, result, _ in rows if site == "forwarded"]
    share = sorted(forwarded_rates)[len(forwarded_rates) // 2] / sorted(
        local_rates)[len(local_rates) // 2]
    print(f"forwarded / local (medians): {share:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
