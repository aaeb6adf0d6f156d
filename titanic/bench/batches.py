"""Batches against single submits: how fast one producer stores N requests each way.

    python -m titanic.bench.batches [--requests 10000] [--backend sqlite|postgres|both]
                                    [--postgres postgresql+psycopg://postgres@127.0.0.1/postgres]

`titanic up` (the broker with the dispatcher in it, no worker: what is stored stays pending)
runs as a subprocess on a fresh SQLite file, and on a fresh PostgreSQL database made on the
server `--postgres` names (and dropped afterwards). One client stores `--requests` requests
one submit() at a time, then as many with one submit_many(); each is counted in the store,
and the table shows both rates and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from titanic.bench.common import free_port, spawn, stop_all, titanic_command
from titanic.bench.tsp import wait_for_titanic
from titanic.client.tsp import TitanicClient

#: The service the requests are stored for: no worker serves it, so they stay pending.
SERVICE = "bench.batches"


@contextmanager
def running_titanic(url: str) -> Iterator[str]:
    """`titanic up` on the database at `url`, serving: its endpoint."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    processes = [spawn(titanic_command("up", "--bind", endpoint, "--db", url))]
    try:
        wait_for_titanic(endpoint)
        yield endpoint
    finally:
        stop_all(processes)


@contextmanager
def fresh_postgres(server: str) -> Iterator[str]:
    """A database made for the run on the PostgreSQL server at `server`, dropped after it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    name = f"titanic_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def stored(url: str) -> int:
    """How many requests for SERVICE the store holds."""
    from titanic.store import RequestStatus, open_store

    store = open_store(url)
    try:
        return store.stats().counts.get((SERVICE, RequestStatus.PENDING), 0)
    finally:
        store.close_store()


def measure(url: str, requests: int) -> tuple[float, float]:
    """Seconds to store `requests` requests with single submits, then with submit_many."""
    bodies = [b"request %d" % n for n in range(requests)]
    with running_titanic(url) as endpoint, TitanicClient(endpoint, timeout=10.0) as client:
        began = time.perf_counter()
        for body in bodies:
            client.submit(SERVICE, body)
        single = time.perf_counter() - began
        began = time.perf_counter()
        ids = client.submit_many(SERVICE, bodies)
        batched = time.perf_counter() - began
    if len(set(ids)) != requests or stored(url) != 2 * requests:
        raise SystemExit(f"expected {2 * requests} requests stored, found {stored(url)}")
    return single, batched


def main(argv: list[str] | None = None) -> None:
    """Run the comparison on each backend asked for and print it."""
    parser = argparse.ArgumentParser(prog="python -m titanic.bench.batches")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/"
                        "postgres", help="a PostgreSQL server URL (a database is made there)")
    args = parser.parse_args(argv)
    rows: list[tuple[str, float, float]] = []
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as folder:
            rows.append(("SQLite", *measure(f"sqlite:///{Path(folder) / 't.db'}",
                                            args.requests)))
    if args.backend in ("postgres", "both"):
        with fresh_postgres(args.postgres) as url:
            rows.append(("PostgreSQL", *measure(url, args.requests)))
    n = args.requests
    print(f"{'store':12} {'single submits':>22} {'submit_many':>22} {'ratio':>7}")
    for name, single, batched in rows:
        print(f"{name:12} {single:7.2f} s {n / single:8.0f}/s {batched:7.2f} s "
              f"{n / batched:8.0f}/s {single / batched:6.1f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
