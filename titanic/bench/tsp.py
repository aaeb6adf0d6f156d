"""Titanic benchmark: titanic.request acknowledgements and end-to-end completions per second.

    python -m titanic.bench.tsp [--requests N] [--depth 32] [--db URL]
                                [--sqlite-synchronous FULL|NORMAL] [--service NAME]

A broker, a dispatcher and two echo workers run as subprocesses on loopback, on a fresh SQLite
file (synchronous=FULL unless told otherwise) unless --db names another database. The client
runs here. `--service` names a service without workers to measure acknowledgements alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.pool import NullPool

from titanic.bench.common import Result, format_table, free_port, spawn, stop_all, titanic_command
from titanic.client import Client, PipelinedClient
from titanic.errors import TitanicTimeoutError
from titanic.protocol import tsp
from titanic.store import RequestStatus
from titanic.store.models import requests_table

SERVICE = b"echo"


@dataclass(frozen=True)
class RunningTitanic:
    """A broker, a dispatcher and echo workers started for a benchmark."""

    endpoint: str
    broker_pid: int
    dispatcher_pid: int


@contextmanager
def running_titanic(db_url: str, workers: int,
                    extra: Sequence[str] = ()) -> Iterator[RunningTitanic]:
    """Broker and dispatcher (and `workers` echo workers) ready to serve."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    processes = [
        spawn(titanic_command("broker", "--bind", endpoint)),
        spawn(titanic_command("dispatcher", "--broker", endpoint, "--db", db_url, *extra)),
    ]
    try:
        processes += [spawn(titanic_command("worker", "echo", "--broker", endpoint))
                      for _ in range(workers)]
        wait_for_titanic(endpoint)
        yield RunningTitanic(endpoint, processes[0].pid, processes[1].pid)
    finally:
        stop_all(processes)


def wait_for_titanic(endpoint: str, deadline_s: float = 30) -> None:
    """Until a dispatcher answers titanic.reply through `endpoint`."""
    deadline = time.monotonic() + deadline_s
    with Client(endpoint, timeout=0.5, retries=0) as client:
        while time.monotonic() < deadline:
            try:
                reply = client.request(tsp.REPLY_SERVICE, b"0" * 32)
                if reply and reply[0].startswith(b"400"):
                    return
            except TitanicTimeoutError:
                continue
    raise RuntimeError(f"titanic at {endpoint} did not answer in {deadline_s} s")


def measure_acks_sync(endpoint: str, requests: int, body: bytes,
                      service: bytes = SERVICE) -> Result:
    """One synchronous client submitting one request at a time."""
    latencies: list[float] = []
    with Client(endpoint, timeout=5, retries=0) as client:
        started = time.perf_counter()
        for _ in range(requests):
            t0 = time.perf_counter()
            reply = client.request(tsp.REQUEST_SERVICE, service, body)
            if not reply[0].startswith(b"200"):
                raise RuntimeError(f"titanic.request answered {reply[0]!r}")
            latencies.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
    return Result("titanic.request, sync", requests, seconds, latencies)


def measure_acks_pipelined(endpoint: str | Sequence[str], requests: int, body: bytes, depth: int,
                           service: bytes = SERVICE, *,
                           keyed: bool = False) -> tuple[Result, list[str]]:
    """`depth` titanic.requests in flight (each with an idempotency key, as TitanicClient sends
    them, if `keyed`); returns the result and the UUIDs."""
    latencies: list[float] = []
    sent_at: dict[int, float] = {}
    ids: list[str] = []
    with PipelinedClient(endpoint, depth=depth, timeout=10, retries=0) as client:
        def stamped() -> Iterator[tuple[bytes, list[bytes]]]:
            for index in range(requests):
                sent_at[index] = time.perf_counter()
                yield tsp.REQUEST_SERVICE, tsp.build_request(
                    service, [body], uuid.uuid4().hex if keyed else None)

        started = time.perf_counter()
        for completion in client.run(stamped()):
            if completion.error is not None:
                raise completion.error
            assert completion.reply is not None and isinstance(completion.tag, int)
            if not completion.reply[0].startswith(b"200"):
                raise RuntimeError(f"titanic.request answered {completion.reply[0]!r}")
            ids.append(completion.reply[1].decode())
            latencies.append(time.perf_counter() - sent_at.pop(completion.tag))
        seconds = time.perf_counter() - started
    name = f"titanic.request, {depth} in flight{', keyed' if keyed else ''}"
    return Result(name, requests, seconds, latencies), ids


def _unfinished(engine: Engine, service: str) -> int:
    """Requests of `service` not finished yet: an index-only count (the status, service and due
    index), cheap enough to ask every few milliseconds without slowing what is measured."""
    table = requests_table
    statement = select(func.count()).select_from(table).where(
        table.c.service == service,
        table.c.status.in_([RequestStatus.PENDING.value, RequestStatus.DISPATCHED.value]))
    with engine.connect() as conn:
        return int(conn.execute(statement).scalar_one())


def _wait_finished(engine: Engine, service: str, deadline_s: float = 300) -> None:
    deadline = time.monotonic() + deadline_s
    while _unfinished(engine, service):
        if time.monotonic() > deadline:
            raise RuntimeError(f"requests for {service!r} not finished in {deadline_s} s")
        time.sleep(0.005)


def measure_end_to_end(endpoint: str | Sequence[str], db_url: str, requests: int, body: bytes,
                       depth: int, *, keyed: bool = False) -> Result:
    """Submit with `depth` in flight; time until every one is done (read from the database).

    Requests left over from earlier loads are finished first, so only these are timed.
    """
    engine = create_engine(db_url, poolclass=NullPool)
    service = SERVICE.decode()
    try:
        _wait_finished(engine, service)
        started = time.perf_counter()
        measure_acks_pipelined(endpoint, requests, body, depth, keyed=keyed)
        _wait_finished(engine, service)
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return Result(f"end to end, {depth} in flight{', keyed' if keyed else ''}", requests,
                  seconds, [])


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--sync-requests", type=int, default=2_000)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--size", type=int, default=100, help="body bytes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--db", help="database URL (default: a new SQLite file)")
    parser.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--service", default=SERVICE.decode(),
                        help="service the requests are for (one without workers: acks only)")
    args = parser.parse_args(argv)
    body = b"x" * args.size
    with tempfile.TemporaryDirectory() as folder:
        db_url = args.db or f"sqlite:///{Path(folder) / 'bench.db'}"
        rows: list[tuple[str, Result]] = []
        service = args.service.encode()
        extra = ["--sqlite-synchronous", args.sqlite_synchronous]
        with running_titanic(db_url, args.workers, extra) as titanic:
            endpoint = titanic.endpoint
            rows.append(("titanic", measure_acks_sync(endpoint, args.sync_requests, body,
                                                      service)))
            rows.append(("titanic", measure_acks_pipelined(endpoint, args.requests, body,
                                                           args.depth, service)[0]))
            if service == SERVICE:
                rows.append(("titanic", measure_end_to_end(endpoint, db_url, args.requests,
                                                           body, args.depth)))
    database = args.db or f"a new SQLite file, synchronous={args.sqlite_synchronous}"
    print(f"{args.size}-byte bodies, {args.workers} echo workers, database: {database}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
