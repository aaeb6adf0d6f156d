"""`titanic bench`: every figure in one run, each printed as it is measured.

MDP round trips (tcp and inproc) and the same loads brokerless (10/FLP), titanic.request
acknowledgements at several depths, and end-to-end completions; with `compare`, the same MDP
loads through majortomo's broker and a bare zmq.proxy device, and our rates as ratios of theirs.
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

from titanic.bench import device, flp, mdp, tsp
from titanic.bench.common import Result, idle_cpu_percent
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
    #: Running freelance servers to measure; empty: `workers` echo servers started on loopback
    #: (unless `broker` is given: then no brokerless rows).
    freelance: tuple[str, ...] = ()
    compare: bool = False
    titanic: bool = True
    idle_seconds: float = 10.0


@dataclass
class Row:
    """One measured figure."""

    section: str
    target: str
    result: Result
    ratios: dict[str, float] = field(default_factory=dict)
    note: str = ""
    idle_percent: float | None = None


Report = Callable[[Row], None]


def print_row(row: Row) -> None:
    figure = row.note or f"{row.result.rate:9.0f}/s"
    print(f"  {row.section:10} {row.target:28} {row.result.name:36} {figure}", file=sys.stderr,
          flush=True)


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


def run_mdp(options: BenchOptions, report: Report = print_row) -> list[Row]:
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
    if options.freelance or not options.broker:  # never local servers beside a remote broker
        rows.extend(run_freelance(options, report))
    with _inproc_broker(options.workers) as (endpoint, context):
        measure("titanic, inproc", endpoint, Dialect.MDP01, context, new_socket=False)
    if options.compare:
        command, dialect = mdp.BROKERS["majortomo 0.2.0"]
        with mdp.running_broker(command, dialect, options.workers) as endpoint:
            measure("majortomo 0.2.0, tcp", endpoint, dialect)
        with device.running_device(options.workers) as frontend:
            # The same client code as every broker above (REP echo workers reflect a 7/MDP
            # request as a valid 7/MDP reply), so only what sits between client and worker
            # differs; then the device's own minimal client, the absolute floor.
            measure("bare zmq.proxy, tcp", frontend, Dialect.MDP01, new_socket=False)
            for result in (device.measure(frontend, options.sync_requests, body, 1),
                           device.measure(frontend, options.requests, body, options.depth)):
                rows.append(Row("mdp", "bare zmq.proxy, minimal client", result))
                report(rows[-1])
    _add_ratios(rows)
    return rows


def run_freelance(options: BenchOptions, report: Report = print_row) -> list[Row]:
    """The same client loads brokerless (10/FLP): one FreelanceClient calling echo servers."""
    body = b"x" * options.size
    rows: list[Row] = []
    with ExitStack() as stack:
        if options.freelance:
            endpoints = list(options.freelance)
            flp.wait_until_served(endpoints)
            target = "titanic brokerless, given"
        else:
            endpoints = stack.enter_context(flp.running_servers(options.workers))
            target = "titanic brokerless, tcp"
        for result in (flp.measure_sync(endpoints, options.sync_requests, body),
                       flp.measure_pipelined(endpoints, options.requests, body, options.depth)):
            rows.append(Row("mdp", target, result))
            report(rows[-1])
    return rows


def _add_ratios(rows: list[Row]) -> None:
    """Each titanic tcp row as a ratio of the same load through the other targets."""
    others = [row for row in rows if row.section == "mdp" and not row.target.startswith("titanic")]
    brokered = {row.result.name: row.result.rate for row in rows if row.target == "titanic, tcp"}
    for row in rows:
        if row.target.startswith("titanic brokerless") and brokered.get(row.result.name):
            row.ratios["titanic, tcp"] = row.result.rate / brokered[row.result.name]
        if row.target != "titanic, tcp":
            continue
        for other in others:
            if other.result.name == row.result.name and other.result.rate:
                row.ratios[other.target] = row.result.rate / other.result.rate


def run_titanic(options: BenchOptions, report: Report = print_row) -> list[Row]:
    """titanic.request acknowledgements at each depth, and end-to-end completions."""
    body = b"x" * options.size
    rows: list[Row] = []
    with ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        db_url = f"sqlite:///{Path(folder) / 'bench.db'}"
        running: tsp.RunningTitanic | None = None
        if options.broker:
            endpoint = options.broker
        else:
            running = stack.enter_context(tsp.running_titanic(db_url, options.workers))
            endpoint = running.endpoint
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
        if running is not None and options.idle_seconds > 0:
            pids = {"broker": running.broker_pid, "dispatcher": running.dispatcher_pid}
            idle = Result(f"idle for {options.idle_seconds:g} s", 0, 0.0, ())
            for name, percent in idle_cpu_percent(pids, options.idle_seconds).items():
                rows.append(Row("idle", name, idle, note=f"{percent:.2f}% of a core",
                                idle_percent=percent))
                report(rows[-1])
    return rows


def format_rows(rows: list[Row]) -> str:
    """The final table, then the project's targets as measured in this run."""
    lines = [f"{'section':8} {'target':30} {'load':36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
             "  ratios"]
    for row in rows:
        r = row.result
        if row.note:
            lines.append(f"{row.section:8} {row.target:30} {r.name:36} {row.note}")
            continue
        p50 = f"{r.percentile(0.5):8.3f}" if r.latencies else f"{'-':>8}"
        p99 = f"{r.percentile(0.99):8.3f}" if r.latencies else f"{'-':>8}"
        ratios = ", ".join(f"{v:.2f}x {k}" for k, v in row.ratios.items())
        lines.append(f"{row.section:8} {row.target:30} {r.name:36} {r.rate:9.0f} {p50} {p99}"
                     f"  {ratios}")
    targets = format_targets(rows)
    return "\n".join(lines + (["", *targets] if targets else []))


def _rate(rows: list[Row], target: str, load: str) -> float | None:
    for row in rows:
        if row.target == target and row.result.name == load and row.result.rate:
            return row.result.rate
    return None


#: (what, numerator (target, load), denominator (target, load), at least)
TARGETS = [
    ("broker, 32 in flight, vs majortomo", ("titanic, tcp", "pipelined, 32 in flight"),
     ("majortomo 0.2.0, tcp", "pipelined, 32 in flight"), 2.0),
    ("broker, 32 in flight, vs bare device", ("titanic, tcp", "pipelined, 32 in flight"),
     ("bare zmq.proxy, tcp", "pipelined, 32 in flight"), 0.40),
    ("titanic.request sync vs device sync", ("titanic.request, SQLite FULL",
                                             "titanic.request, sync"),
     ("bare zmq.proxy, tcp", "sync, socket kept"), 0.60),
    ("titanic.request 64 in flight vs echo", ("titanic.request, SQLite FULL",
                                              "titanic.request, 64 in flight"),
     ("titanic, tcp", "pipelined, 32 in flight"), 0.50),
    ("end to end vs echo", ("end to end, 2 echo workers", "end to end, 32 in flight"),
     ("titanic, tcp", "pipelined, 32 in flight"), 0.25),
]


def format_targets(rows: list[Row]) -> list[str]:
    """Each target whose two figures were measured in this run: the ratio, and met or not."""
    lines = []
    for what, (num_target, num_load), (den_target, den_load), least in TARGETS:
        num, den = _rate(rows, num_target, num_load), _rate(rows, den_target, den_load)
        if num is None or den is None:
            continue
        ratio = num / den
        verdict = "met" if ratio >= least else "MISSED"
        lines.append(f"target   {what:44} {ratio:6.2f}x (at least {least:.2f}x)  {verdict}")
    for row in rows:
        if row.idle_percent is not None:
            verdict = "met" if row.idle_percent < 1.0 else "MISSED"
            lines.append(f"target   {'idle ' + row.target + ' CPU':44} {row.idle_percent:6.2f}% "
                         f"(under 1%)          {verdict}")
    return lines
