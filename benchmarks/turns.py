"""What the dispatcher's store exchanges look like under the "32 at once" load.

A broker and two echo workers run as processes; the dispatcher runs here, on a thread, with its
store's `exchange` wrapped to record each call: how many new requests, replies and claims it
carried and how long it took. 3,000 titanic.requests are then submitted 32 at once (after 2,000
to warm up), for `--service` (default echo; a service without workers measures
acknowledgements alone). Prints the rate, the exchanges' sizes and durations, and the share of
the time the dispatcher spent in them.

    python benchmarks/turns.py [--db sqlite|postgres] [--service echo]

PostgreSQL: a new database on PEERS_PG (as compare.py), dropped afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from systems import dispatcher_on_thread, fresh_database

from titanic.bench.tsp import measure_acks_pipelined
from titanic.store import Exchange, NewRequest, open_store

BODY = b"x" * 100
DEPTH = 32


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--service", default="echo")
    parser.add_argument("--jobs", type=int, default=3_000)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        if args.db == "postgres":
            dsn = stack.enter_context(fresh_database("turns"))
            url = dsn.replace("postgresql://", "postgresql+psycopg://")
        else:
            url = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/turns.db"
        store = open_store(url)
        stack.callback(store.close_store)
        calls: list[tuple[int, int, int, float]] = []  # new, replies, claimed, seconds
        exchange = store.exchange

        def recorded(new: Sequence[NewRequest], replies: Sequence[tuple[str, Sequence[bytes]]],
                     claims: Mapping[str, int], lease: float, **options: Any) -> Exchange:
            started = time.perf_counter()
            result = exchange(new, replies, claims, lease, **options)
            calls.append((len(new), len(replies), len(result.claimed),
                          time.perf_counter() - started))
            return result

        store.exchange = recorded  # type: ignore[method-assign]
        endpoint = stack.enter_context(dispatcher_on_thread(store))
        service = args.service.encode()
        measure_acks_pipelined(endpoint, 2_000, BODY, DEPTH, service)
        calls.clear()
        seconds = measure_acks_pipelined(endpoint, args.jobs, BODY, DEPTH, service)[0].seconds
        acks = [call for call in calls if call[0]]
        print(f"{args.db}, {args.service}: {args.jobs / seconds:,.0f} titanic.requests/s, "
              f"{len(calls)} exchanges, {sum(call[3] for call in calls) / seconds:.0%} of "
              "the time in them")
        if acks:
            print(f"  with new requests: {len(acks)}, new per exchange "
                  f"{statistics.mean(call[0] for call in acks):.1f} (mean), replies "
                  f"{statistics.mean(call[1] for call in acks):.1f}, claimed "
                  f"{statistics.mean(call[2] for call in acks):.1f}; took "
                  f"{statistics.median(call[3] for call in acks) * 1e3:.2f} ms (p50)")
            sizes = sorted(Counter(call[0] for call in acks).items())
            print("  new requests per exchange: " + ", ".join(f"{n}: {count}"
                                                             for n, count in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
