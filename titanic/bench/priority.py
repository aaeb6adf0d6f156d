"""Priority benchmark: claims from a backlog of mixed priorities, and the order they come in.

    python -m titanic.bench.priority [--backlog 50000] [--postgres URL] [--skip-postgres]

For each database (SQLite, PostgreSQL) a fresh store gets `--backlog` requests waiting for one
service, stored 1,000 per commit, their priorities drawn from PRIORITIES (a fixed seed); then
the dispatcher's pattern under load runs until nothing waits: `claim_due(limit=100)` and
`complete_many()` of what it claimed. Figures per database: the storing and claim+complete
rates with mixed priorities and, on a second fresh store, with every priority 0 (the cost of
priorities), and whether every claim came out highest priority first, then oldest (`order
held`: the number of requests claimed before one of a higher priority still waiting, 0 when
it holds).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from titanic.bench.store import _fresh_postgres
from titanic.store import NewRequest, SqlStore, open_store

BODY = (b"x" * 100,)
PRIORITIES = (-1, 0, 0, 0, 1, 5, 10)
SERVICE = "bench"
BATCH = 1_000


def fill(store: SqlStore, count: int, mixed: bool, seed: int = 7) -> float:
    """Store `count` waiting requests (BATCH per commit); returns requests stored per second."""
    draw = random.Random(seed)
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        size = min(BATCH, count - first)
        store.submit_many([NewRequest(SERVICE, BODY, priority=draw.choice(PRIORITIES)
                                      if mixed else 0) for _ in range(size)])
    return count / (time.perf_counter() - started)


def drain(store: SqlStore, count: int) -> tuple[float, int]:
    """Claim and complete until nothing waits: claims per second, and how many requests were
    claimed out of order (a lower priority, or a later one of the same, before another)."""
    started = time.perf_counter()
    claimed: list[tuple[int, str]] = []
    while batch := store.claim_due([SERVICE], 100, 60):
        claimed += [(request.priority, request.id) for request in batch]
        store.complete_many([(request.id, BODY) for request in batch])
    rate = len(claimed) / (time.perf_counter() - started)
    if len(claimed) != count:
        raise RuntimeError(f"claimed {len(claimed)} of {count} requests")
    wrong = sum(1 for before, after in pairwise(claimed)
                if (-before[0], before[1]) > (-after[0], after[1]))
    return rate, wrong


def run(name: str, urls: Sequence[str], backlog: int) -> list[tuple[str, str, str]]:
    """Both backlogs on one database (each on its own fresh store): table rows."""
    rows = []
    for url, mixed in zip(urls, (True, False), strict=True):
        label = "mixed priorities" if mixed else "all priority 0"
        store = open_store(url)
        try:
            stored = fill(store, backlog, mixed)
            print(f"{name}, {label}: {backlog:,} stored", file=sys.stderr, flush=True)
            rate, wrong = drain(store, backlog)
        finally:
            store.close_store()
        rows.append((name, f"store {backlog:,}, {label}", f"{stored:,.0f}/s"))
        rows.append((name, f"claim+complete, {label}", f"{rate:,.0f}/s"))
        if mixed:
            rows.append((name, "order held (out of order)", f"{wrong:d}"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run each database and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="server URL; throw-away databases are made on it")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        rows += run("SQLite", [f"sqlite:///{Path(folder) / f'{kind}.db'}"
                               for kind in ("mixed", "flat")], args.backlog)
    if not args.skip_postgres:
        made = [_fresh_postgres(args.postgres) for _ in range(2)]
        try:
            rows += run("PostgreSQL", [url for url, _ in made], args.backlog)
        finally:
            for _, drop in made:
                drop()
    print(f"{'database':12} {'figure':40} {'value':>12}")
    for database, figure, value in rows:
        print(f"{database:12} {figure:40} {value:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
