"""How soon a waiting client hears of its reply: titanic.wait against polling titanic.reply.

    python -m titanic.bench.waits [--threads 8] [--seconds 10] [--separate]

`titanic up --demo` (the broker with the dispatcher in it, and an echo worker) runs as a
subprocess on a fresh SQLite file; with --separate a broker, a `titanic-dispatcher` and an
echo worker instead. Here, `--threads` threads each loop submit, wait and close against the
echo service for `--seconds`, once asking titanic.wait (the default) and once polling
titanic.reply as a client without the extension does; each prints its rate and latency. Then
`--probes` requests are waited for one at a time, and the time from the commit of each reply
(its completed_at in the store) to the moment wait() returned is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from titanic.bench.common import Result, format_table, free_port, spawn, stop_all, titanic_command
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.errors import TitanicTimeoutError


@contextmanager
def running_titanic(db: Path, separate: bool) -> Iterator[str]:
    """`titanic up --demo` (or the three processes apart) on `db`, ready: its endpoint."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    url = f"sqlite:///{db}"
    if separate:
        processes = [spawn(titanic_command("broker", "--bind", endpoint)),
                     spawn(titanic_command("dispatcher", "--broker", endpoint, "--db", url)),
                     spawn(titanic_command("worker", "echo", "--broker", endpoint))]
    else:
        processes = [spawn(titanic_command("up", "--demo", "--bind", endpoint, "--db", url))]
    try:
        _wait_ready(endpoint)
        yield endpoint
    finally:
        stop_all(processes)


def _wait_ready(endpoint: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with TitanicClient(endpoint, timeout=1.0, retries=0) as client:
                request_id = client.submit("echo", b"ready")
                if client.wait(request_id, 5).state is ReplyState.DONE:
                    client.close_request(request_id)
                    return
        except TitanicTimeoutError:
            time.sleep(0.2)
    raise SystemExit(f"titanic did not serve at {endpoint} within {timeout:g} s")


def loop(endpoint: str, threads: int, seconds: float, held: bool) -> Result:
    """`threads` clients looping submit, wait, close for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        mine: list[float] = []
        with TitanicClient(endpoint, held_waits=held) as client:
            while time.monotonic() < stop:
                began = time.perf_counter()
                request_id = client.submit("echo", b"x")
                fetched = client.wait(request_id, 30)
                if fetched.state is not ReplyState.DONE:
                    raise SystemExit(f"request {request_id} is {fetched}")
                client.close_request(request_id)
                mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return Result(f"{threads} x submit-wait-close, {'titanic.wait' if held else 'polling'}",
                  len(latencies), time.perf_counter() - began, latencies)


def after_commit(endpoint: str, db: Path, probes: int) -> list[float]:
    """Seconds from each reply's commit to wait() returning, one request at a time."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{db}")
    delays: list[float] = []
    with TitanicClient(endpoint) as client, engine.connect() as conn:
        for _ in range(probes):
            request_id = client.submit("echo", b"probe")
            fetched = client.wait(request_id, 30)
            returned = datetime.now(UTC).replace(tzinfo=None)
            if fetched.state is not ReplyState.DONE:
                raise SystemExit(f"request {request_id} is {fetched}")
            stored = conn.execute(text("SELECT completed_at FROM titanic_requests WHERE "
                                       "id = :id"), {"id": request_id}).scalar_one()
            completed = stored if isinstance(stored, datetime) else datetime.fromisoformat(stored)
            delays.append((returned - completed).total_seconds())
            client.close_request(request_id)
    engine.dispose()
    return delays


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(prog="python -m titanic.bench.waits")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--separate", action="store_true",
                        help="a titanic-dispatcher of its own instead of titanic up")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "titanic.db"
        with running_titanic(db, args.separate) as endpoint:
            rows = [(("titanic up" if not args.separate else "broker + dispatcher"),
                     loop(endpoint, args.threads, args.seconds, held))
                    for held in (True, False)]
            delays = after_commit(endpoint, db, args.probes)
    print(format_table(rows))
    held_rate, polled_rate = rows[0][1].rate, rows[1][1].rate
    print(f"titanic.wait: {held_rate / polled_rate:.1f}x the polling rate")
    ordered = sorted(delays)
    print(f"wait() returned after the reply's commit: p50 {statistics.median(ordered) * 1000:.2f}"
          f" ms, p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:.2f} ms "
          f"({len(ordered)} requests, one at a time)")


if __name__ == "__main__":
    main(sys.argv[1:])
