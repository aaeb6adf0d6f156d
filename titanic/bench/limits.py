"""Shared limits benchmark: two brokers hosting dispatchers on one store, a limited service.

    python -m titanic.bench.limits [--requests 200] [--rate 20] [--max-in-flight 2]
                                   [--db URL] [--workers 3]

Two brokers, each hosting a dispatcher on the same database (default: a throw-away PostgreSQL
database on the local server; --db sqlite:///FILE for SQLite), `--workers` workers at each
recording when each request starts and how many run at once. Two runs: `--requests` requests
under `--rate` R/s alone (figures: the span from the first start to the last, against the
(N-1)/R a token bucket of one allows at least, and the rate achieved), then under
`--max-in-flight` alone with 50 ms of work each (the most that ran at once).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack

from titanic.bench.store import _fresh_postgres
from titanic.broker import Broker
from titanic.client.tsp import TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.settings import DispatcherSettings
from titanic.protocol.mdp import Frames
from titanic.settings import BrokerSettings
from titanic.store import open_store
from titanic.worker import Worker

SERVICE = "limited"


class Runs:
    """Every worker's handler: when each request started, and the most at once."""

    def __init__(self, work: float) -> None:
        self.work = work
        self._lock = threading.Lock()
        self.running = self.most = 0
        self.starts: list[float] = []

    def __call__(self, frames: Frames) -> Frames:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.starts.append(time.monotonic())
        if self.work:
            time.sleep(self.work)  # the request's work
        with self._lock:
            self.running -= 1
        return [b"ok"]


def run(url: str, requests: int, workers: int, work: float, *, rate: float | None = None,
        max_in_flight: int | None = None) -> Runs:
    """One run on a fresh service limit: every request submitted, then run."""
    runs = Runs(work)
    with ExitStack() as stack:
        limits = open_store(url)  # set before the dispatchers start, as an operator would
        stack.callback(limits.close_store)
        limits.clear_limit(SERVICE)
        limits.set_limit(SERVICE, rate=rate, max_in_flight=max_in_flight)
        settings = DispatcherSettings(presence_interval=0.2)
        endpoints = []
        for _ in range(2):
            store = open_store(url)
            stack.callback(store.close_store)
            broker = Broker("tcp://127.0.0.1:0", BrokerSettings(), host=HostedDispatcher(
                store, settings))
            endpoints.append(broker.bind()[0])
            thread = threading.Thread(target=broker.run, daemon=True)
            thread.start()
            stack.callback(thread.join, 10)
            stack.callback(broker.stop)
        for endpoint in endpoints:
            for _ in range(workers):
                worker = Worker(endpoint, SERVICE, runs)
                thread = threading.Thread(target=worker.run, daemon=True)
                thread.start()
                stack.callback(thread.join, 10)
                stack.callback(worker.stop)
        clients = [stack.enter_context(TitanicClient(endpoint)) for endpoint in endpoints]
        for n in range(requests):
            clients[n % 2].submit(SERVICE, b"%d" % n)
        deadline = time.monotonic() + 120 + (requests / rate if rate else 0)
        while len(runs.starts) < requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(work)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Both runs, and the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--max-in-flight", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3, help="workers at each broker")
    parser.add_argument("--db", default=None, help="database URL [default: a throw-away "
                        "PostgreSQL database on --postgres]")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    drop = None
    url = args.db
    if url is None:
        url, drop = _fresh_postgres(args.postgres)
    try:
        paced = run(url, args.requests, args.workers, 0.0, rate=args.rate)
        capped = run(url, args.requests, args.workers, 0.05, max_in_flight=args.max_in_flight)
    finally:
        if drop is not None:
            drop()
    span = max(paced.starts) - min(paced.starts) if paced.starts else 0.0
    print(f"{'figure':52} {'value':>12}")
    print(f"{'requests run under the rate':52} {len(paced.starts):>12}")
    print(f"{f'span first to last start at {args.rate:g}/s, s':52} {span:>12.2f}")
    print(f"{'least a bucket of one allows, (N-1)/R, s':52} "
          f"{(args.requests - 1) / args.rate:>12.2f}")
    achieved = (len(paced.starts) - 1) / span if span else 0.0
    print(f"{'rate achieved, requests/s':52} {achieved:>12.2f}")
    print(f"{'requests run under max in flight':52} {len(capped.starts):>12}")
    print(f"{f'most at once with max in flight {args.max_in_flight}':52} {capped.most:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
