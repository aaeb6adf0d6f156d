"""What requests scheduled later at a higher priority cost the claims of a backlog due now.

A claim reads a service's due requests from the (status, service, priority DESC, due_at)
index in its order; requests of a higher priority scheduled for later come first there and are
read past on every claim. On a fresh database: --scheduled requests of one service scheduled a
day ahead at priority 5, then --due requests due now at priority 0, then claim_due(limit=100)
and complete_many() until nothing is due; prints the rate and the time per claim of 100.

    python benchmarks/scheduled_in_the_way.py [--scheduled 20000] [--due 2000]
                                              [--postgres URL] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from titanic.bench.store import _fresh_postgres
from titanic.store import NewRequest, open_store

BODY = (b"x" * 100,)


def measure(url: str, scheduled: int, due: int) -> tuple[int, float]:
    """Requests claimed and seconds taken, on a fresh store at `url`."""
    store = open_store(url)
    try:
        later = datetime.now(UTC) + timedelta(days=1)
        for first in range(0, scheduled, 1000):
            store.submit_many([NewRequest("svc", BODY, priority=5, not_before=later)
                               for _ in range(min(1000, scheduled - first))])
        for first in range(0, due, 1000):
            store.submit_many([NewRequest("svc", BODY) for _ in range(min(1000, due - first))])
        started, claimed = time.perf_counter(), 0
        while batch := store.claim_due(["svc"], 100, 60):
            claimed += len(batch)
            store.complete_many([(request.id, [b"r"]) for request in batch])
        return claimed, time.perf_counter() - started
    finally:
        store.close_store()


def main(argv: Sequence[str] | None = None) -> int:
    """Each database, one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheduled", type=int, default=20_000)
    parser.add_argument("--due", type=int, default=2_000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    urls: list[tuple[str, str]] = []
    drop = None
    if not args.skip_postgres:
        url, drop = _fresh_postgres(args.postgres)
        urls.append(("PostgreSQL", url))
    with tempfile.TemporaryDirectory() as folder:
        urls.append(("SQLite", f"sqlite:///{Path(folder) / 'titanic.db'}"))
        try:
            for name, url in urls:
                claimed, seconds = measure(url, args.scheduled, args.due)
                per_claim = seconds / max(1, claimed / 100) * 1000
                print(f"{name:12} {claimed:>8,} claimed {claimed / seconds:>10,.0f}/s "
                      f"{per_claim:>8.1f} ms per claim of 100")
        finally:
            if drop is not None:
                drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
