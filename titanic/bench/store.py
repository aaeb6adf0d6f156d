"""Store benchmark: submits, batched submits and claim+complete per second, empty and preloaded.

    python -m titanic.bench.store [--rows 1000000] [--postgres URL] [--skip-postgres]
                                  [--store-key FILE]

Each database is measured empty, then again after a bulk preload of --rows requests (90% done,
10% pending for another service, as a store with history and a backlog looks). Figures:
- submit, 1 per commit: `submit()` one request per transaction;
- submit, 100 per commit: `submit_many()` of 100 (what the dispatcher's group commit does);
- claim+complete: `claim_due(limit=100)` then `complete_many()` of the 100, the dispatcher's pattern
  under load; per request.
With --store-key every figure is measured twice, bodies plain and sealed with the key (AES-GCM,
titanic.store.crypto), one after the other on the same database: the cost of encryption at rest;
and sealing and opening one body alone is timed in CPU time (steady on a busy machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, text

from titanic.store import NewRequest, SqlStore, open_store
from titanic.store.frames import encode_frames
from titanic.store.models import requests_table
from titanic.store.rows import utcnow
from titanic.store.types import new_request_id

BODY = (b"x" * 100,)
PRELOAD_BATCH = 10_000


def _rate(count: int, work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def measure(store: SqlStore, single: int, batched: int) -> dict[str, float]:
    """The three rates, on the service "bench" (left empty afterwards)."""
    def submit_single() -> None:
        for _ in range(single):
            store.submit("bench", BODY)

    def submit_batched() -> None:
        for _ in range(batched // 100):
            store.submit_many([NewRequest("bench", BODY)] * 100)

    def claim_complete() -> None:
        while batch := store.claim_due(["bench"], 100, 60):
            store.complete_many([(request.id, BODY) for request in batch])

    rates = {
        "submit, 1 per commit": _rate(single, submit_single),
        "submit, 100 per commit": _rate(batched // 100 * 100, submit_batched),
        "claim+complete, 100 per commit": _rate(single + batched // 100 * 100, claim_complete),
    }
    store.purge(reply_ttl=0, now=utcnow() + timedelta(seconds=1))
    return rates


def sealing_cost(store_key: str, count: int = 20_000) -> dict[str, float]:
    """CPU microseconds to pack and unpack one BODY, plain and sealed (process time, so other
    processes' load does not count)."""
    from titanic.store.crypto import REQUEST, PlainBodies, bodies_for

    costs = {}
    for name, bodies in (("plain", PlainBodies()), ("sealed", bodies_for(store_key))):
        request_id = new_request_id()
        started = time.process_time()
        blobs = [bodies.pack(request_id, REQUEST, BODY) for _ in range(count)]
        packed = time.process_time()
        for blob in blobs:
            bodies.unpack(request_id, REQUEST, blob)
        opened = time.process_time()
        costs[f"pack one body, {name}"] = (packed - started) / count * 1e6
        costs[f"unpack one body, {name}"] = (opened - packed) / count * 1e6
    return costs


def preload(url: str, rows: int) -> float:
    """Insert `rows` requests fast (multi-row inserts); returns seconds taken."""
    engine = create_engine(url)
    started = time.perf_counter()
    now = utcnow()
    packed = encode_frames(BODY)
    try:
        for first in range(0, rows, PRELOAD_BATCH):
            batch = []
            for n in range(first, min(rows, first + PRELOAD_BATCH)):
                done = n % 10 != 0
                batch.append({
                    "id": uuid.UUID(hex=new_request_id()), "service": "history" if done
                    else "backlog", "request": packed, "reply": packed if done else None,
                    "status": "done" if done else "pending", "attempts": 1 if done else 0,
                    "created_at": now, "due_at": now + timedelta(days=365), "lease_until": None,
                    "completed_at": now + timedelta(days=365) if done else None,
                    "last_error": None, "deadline": None, "idempotency_key": None})
            with engine.begin() as conn:
                conn.execute(insert(requests_table), batch)
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(text("ANALYZE titanic_requests"))
                conn.commit()
    finally:
        engine.dispose()
    return time.perf_counter() - started


def run_database(name: str, url: str, rows: int, single: int, batched: int,
                 synchronous: str = "FULL",
                 store_key: str | None = None) -> list[tuple[str, str, float]]:
    """Measure one database empty and preloaded (with a store key: plain, then sealed); rows
    of (database, figure, rate)."""
    results = []
    stores = [("", open_store(url, sqlite_synchronous=synchronous))]
    if store_key is not None:
        stores.append((", sealed", open_store(url, sqlite_synchronous=synchronous,
                                              store_key=store_key)))
    try:
        for suffix, store in stores:
            for figure, rate in measure(store, single, batched).items():
                results.append((f"{name}, empty", figure + suffix, rate))
        print(f"{name}: preloading {rows:,} rows...", file=sys.stderr, flush=True)
        seconds = preload(url, rows)
        print(f"{name}: preloaded in {seconds:.0f} s", file=sys.stderr, flush=True)
        for suffix, store in stores:
            for figure, rate in measure(store, single, batched).items():
                results.append((f"{name}, {rows:,} rows", figure + suffix, rate))
    finally:
        for _, store in stores:
            store.close_store()
    return results


def _fresh_postgres(server: str) -> tuple[str, Callable[[], None]]:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"titanic_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return server.rsplit("/", 1)[0] + "/" + name, drop


def main(argv: Sequence[str] | None = None) -> int:
    """Run every database and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=2_000, help="one-at-a-time submits")
    parser.add_argument("--batched", type=int, default=20_000, help="batched submits")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="server URL; a throw-away database is made on it")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--store-key", metavar="FILE", default=None,
                        help="also measure with bodies sealed by this store key file")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for mode in ("FULL", "NORMAL"):
            url = f"sqlite:///{Path(folder) / f'bench-{mode}.db'}"
            results += run_database(f"SQLite {mode}", url, args.rows, args.single, args.batched,
                                    synchronous=mode, store_key=args.store_key)
    if not args.skip_postgres:
        url, drop = _fresh_postgres(args.postgres)
        try:
            results += run_database("PostgreSQL", url, args.rows, args.single, args.batched,
                                    store_key=args.store_key)
        finally:
            drop()
    print(f"{'database':32} {'figure':40} {'per second':>12}")
    for database, figure, rate in results:
        print(f"{database:32} {figure:40} {rate:12,.0f}")
    if args.store_key is not None:
        print(f"\n{'100-byte body':32} {'CPU microseconds':>12}")
        for figure, micros in sealing_cost(args.store_key).items():
            print(f"{figure:32} {micros:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
