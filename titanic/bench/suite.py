"""`titanic bench`: every figure in one run, each printed as it is measured.

MDP round trips (tcp and inproc), titanic.request acknowledgements at several depths, and end-to-end
completions; with `compare`, the same MDP loads through majortomo's broker and a bare zmq.proxy
device, and our rates as ratios of theirs.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from titanic.bench import device, mdp, tsp
from titanic.bench.common import Result
from titanic.broker import Broker
from titanic.protocol.mdp import Dialect
from titanic.worker import Worker, echo_handler


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how much."""

    requests: int = 20_000
    sync_requests: int = 3_000
    size: int = 100
    depth: int = 32
    workers: int = 2
    titanic_depths: tuple[int, ...] = (1, 16, 64)
    broker: str | None = None  # a running broker (with a dispatcher for the titanic rows)
    compare: bool = False
    titanic: bool = True


@dataclass
class Row:
    """One measured figure."""

    section: str
    target: str
    result: Result
    ratios: dict[str, float] = field(default_factory=dict)


Report = Callable[[Row], None]


def _print_row(row: Row) -> None:
    print(f"  {row.section:10} {row.target:28} {row.result.name:32} "
          f"{row.result.rate:9.0f}/s", file=sys.stderr, flush=True)


@contextmanager
def _inproc_broker(workers: int) -> Iterator[tuple[str, zmq.Context[zmq.Socket[bytes]]]]:
    """Broker and echo workers as threads on inproc://, sharing one context with the client."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    endpoint = "inproc://titanic-bench"
    broker = Broker(endpoint, context=context)
    broker.bind()
    servers: list[Broker | Worker] = [broker] + [
        Worker(endpoint, "echo", echo_handler, context=context) for _ in range(workers)]
    threads = [threading.Thread(target=server.run, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield endpoint, context
    finally:
        for server in reversed(servers):
            server.stop()
        for thread in threads:
            thread.join(5)
        context.term()


def run_mdp(options: BenchOptions, report: Report = _print_row) -> list[Row]:
    """MDP round trips through our broker (and, with compare, through the others)."""
    body = b"x" * options.size
    rows: list[Row] = []

    def measure(target: str, endpoint: str, dialect: Dialect,
                context: zmq.Context[zmq.Socket[bytes]] | None = None,
                new_socket: bool = True) -> None:
        loads = [mdp.measure_sync(endpoint, dialect, options.sync_requests, body,
                                  context=context)]
        if new_socket:
            loads.append(mdp.measure_sync(endpoint, dialect, options.sync_requests // 3, body,
                                          new_socket=True, context=context))
        loads.append(mdp.measure_pipelined(endpoint, dialect, options.requests, body,
                                           options.depth, context=context))
        for result in loads:
            rows.append(Row("mdp", target, result))
            report(rows[-1])

    with ExitStack() as stack:
        if options.broker:
            endpoint = options.broker
        else:
            command, dialect = mdp.BROKERS["titanic (7/MDP)"]
            endpoint = stack.enter_context(mdp.running_broker(command, dialect, options.workers))
        measure("titanic, tcp", endpoint, Dialect.MDP01)
    with _inproc_broker(options.workers) as (endpoint, context):
        measure("titanic, inproc", endpoint, Dialect.MDP01, context, new_socket=False)
    if options.compare:
        command, dialect = mdp.BROKERS["majortomo 0.2.0"]
        with mdp.running_broker(command, dialect, options.workers) as endpoint:
            measure("majortomo 0.2.0, tcp", endpoint, dialect)
        with device.running_device(options.workers) as frontend:
            for result in (device.measure(frontend, options.sync_requests, body, 1),
                           device.measure(frontend, options.requests, body, options.depth)):
                rows.append(Row("mdp", "bare zmq.proxy, tcp", result))
                report(rows[-1])
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[Row]) -> None:
    """Each titanic tcp row as a ratio of the same load through the other targets."""
    others = [row for row in rows if row.section == "mdp" and not row.target.startswith("titanic")]
    for row in rows:
        if row.target != "titanic, tcp":
            continue
        for other in others:
            if other.result.name == row.result.name and other.result.rate:
                row.ratios[other.target] = row.result.rate / other.result.rate


def run_titanic(options: BenchOptions, report: Report = _print_row) -> list[Row]:
    """titanic.request acknowledgements at each depth, and end-to-end completions."""
    body = b"x" * options.size
    rows: list[Row] = []
    with ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        db_url = f"sqlite:///{Path(folder) / 'bench.db'}"
        if options.broker:
            endpoint = options.broker
        else:
            endpoint = stack.enter_context(tsp.running_titanic(db_url, options.workers))
        for depth in options.titanic_depths:
            result = (tsp.measure_acks_sync(endpoint, options.sync_requests, body) if depth == 1
                      else tsp.measure_acks_pipelined(endpoint, options.requests // 2, body,
                                                      depth)[0])
            rows.append(Row("titanic", "titanic.request, SQLite FULL", result))
            report(rows[-1])
        # The guide's Titanic was measured with 300 requests pending for a service without
        # workers; this is that case: nothing is dispatched while requests are acknowledged.
        result = tsp.measure_acks_pipelined(endpoint, options.requests // 2, body, 64,
                                            service=b"no-worker-service")[0]
        rows.append(Row("titanic", "titanic.request, no workers", result))
        report(rows[-1])
        if not options.broker:
            result = tsp.measure_end_to_end(endpoint, db_url, options.requests // 2, body,
                                            options.depth)
            rows.append(Row("titanic", "end to end, 2 echo workers", result))
            report(rows[-1])
    return rows


def format_rows(rows: list[Row]) -> str:
    """The final table."""
    lines = [f"{'section':8} {'target':30} {'load':32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
             "  ratios"]
    for row in rows:
        r = row.result
        p50 = f"{r.percentile(0.5):8.3f}" if r.latencies else f"{'-':>8}"
        p99 = f"{r.percentile(0.99):8.3f}" if r.latencies else f"{'-':>8}"
        ratios = ", ".join(f"{v:.2f}x {k}" for k, v in row.ratios.items())
        lines.append(f"{row.section:8} {row.target:30} {r.name:32} {r.rate:9.0f} {p50} {p99}"
                     f"  {ratios}")
    return "\n".join(lines)
