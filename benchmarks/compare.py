"""titanic beside the job queues users would pick instead, the same loads on the same machine.

The peers run from their own released packages, at their documented defaults, in a virtual
environment outside the repository that also holds titanic:

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install -e . pgqueuer asyncpg celery rq procrastinate redis
    /work/peers-venv/bin/python benchmarks/compare.py [--rounds 3] [--only NAME ...]

It needs the local PostgreSQL (PEERS_PG, default postgresql://postgres@127.0.0.1:5432; each
system gets a new database, dropped afterwards), `redis-server` on PATH (a private instance
on a free port, keeping nothing on disk, stopped afterwards) and RabbitMQ on 127.0.0.1:5672
(started with `service rabbitmq-server start` if it is not running, and then stopped again).

Loads, each system in turn, in alternating rounds (medians and ranges over the rounds):
- one producer, one job at a time, workers running: submits/s and p50 (for titanic also the
  dispatcher's own time per request, from its metrics);
- 32 submissions at once: submits/s;
- end to end: 5,000 jobs submitted 32 at once, until the last is done: jobs/s, and the CPU of
  every process involved (workers, broker or dispatcher, the database or message server's
  processes for this run, this client) per job;
- draining a backlog of 50,000 waiting jobs with the workers started afterwards, on a table just
  filled (no statistics) and, for the PostgreSQL queues, again after ANALYZE: jobs/s from 5% done
  until the backlog is gone or --drain-seconds have passed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from systems import HOSTED, System, all_systems, analyze

from titanic.bench.common import cpu_seconds

LOADS = ["one producer, submits/s", "one producer, p50 ms", "32 at once, submits/s",
         "end to end, jobs/s", "CPU per end-to-end job, µs", "drain 50,000, fresh, jobs/s",
         "drain 50,000, after ANALYZE, jobs/s"]

CPU_PART = "  of which"
#: One producer's time inside titanic's dispatcher, per request (from its metrics).
INSIDE = ("one producer, dispatcher: read to answer, mean ms",
          "one producer, dispatcher: in the store, per request, ms")
FLOOR_PARTS = ("broker round trip", "fsync'd commit")
WAITING_FRESH = " (50,000 waiting, fresh)"
WAITING_ANALYZED = " (50,000 waiting, after ANALYZE)"


@dataclass
class Options:
    """How much of each load."""

    sync_jobs: int = 1_000
    concurrent_jobs: int = 3_000
    depth: int = 32
    end_to_end_jobs: int = 5_000
    backlog: int = 50_000
    drain_seconds: float = 20.0
    timeout_s: float = 300.0


@dataclass
class Figures:
    """Every figure measured, by (system, load), one per round."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    durability: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, system: str, load: str, value: float) -> None:
        self.values[(system, load)].append(value)
        print(f"  {system:32} {load:38} {value:10.1f}", file=sys.stderr, flush=True)


def wait_until_done(system: System, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while system.remaining():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system.name}: jobs not finished within {timeout_s} s")
        time.sleep(0.005)


def cpu_of(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # ended meanwhile
            total += cpu_seconds(pid)
    return total


def measure_running(system: System, options: Options, figures: Figures,
                    suffix: str = "") -> None:
    """Loads with the workers running: one producer, 32 at once, end to end with CPU."""
    latencies = []
    inside = {} if suffix else system.timings()
    started = time.perf_counter()
    for _ in range(options.sync_jobs):
        t0 = time.perf_counter()
        system.submit_one()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    figures.add(system.name, LOADS[0] + suffix, options.sync_jobs / elapsed)
    figures.add(system.name, LOADS[1] + suffix, statistics.median(latencies) * 1000)
    if inside:
        after = system.timings()
        acks = after["read to answer"][1] - inside["read to answer"][1]
        if acks:
            figures.add(system.name, INSIDE[0], (after["read to answer"][0]
                                                 - inside["read to answer"][0]) / acks * 1000)
        figures.add(system.name, INSIDE[1], (after["store"][0] - inside["store"][0])
                    / options.sync_jobs * 1000)
    wait_until_done(system, options.timeout_s)
    started = time.perf_counter()
    system.submit_concurrently(options.concurrent_jobs, options.depth)
    figures.add(system.name, LOADS[2] + suffix,
                options.concurrent_jobs / (time.perf_counter() - started))
    wait_until_done(system, options.timeout_s)
    pids, roles = system.pids(), system.roles()
    cpu_before = cpu_of(pids) + time.process_time()
    by_role = {role: cpu_of(members) for role, members in roles.items()}
    client_before = time.process_time()
    started = time.perf_counter()
    system.submit_concurrently(options.end_to_end_jobs, options.depth)
    wait_until_done(system, options.timeout_s)
    elapsed = time.perf_counter() - started
    cpu = cpu_of(pids) + time.process_time() - cpu_before
    figures.add(system.name, LOADS[3] + suffix, options.end_to_end_jobs / elapsed)
    figures.add(system.name, LOADS[4] + suffix, cpu / options.end_to_end_jobs * 1e6)
    if not suffix:
        by_role = {role: cpu_of(roles[role]) - before for role, before in by_role.items()}
        by_role["client (submitting and polling)"] = time.process_time() - client_before
        for role, seconds in by_role.items():
            figures.add(system.name, f"{CPU_PART} {role}, µs", seconds / options.end_to_end_jobs
                        * 1e6)


def measure_drain(make: Callable[[], System], analyzed: bool, options: Options,
                  figures: Figures) -> None:
    """A new system with a backlog, the workers started afterwards: the drain rate."""
    system = make()
    system.start()
    try:
        system.fill(options.backlog)
        if analyzed:
            assert system.postgres_table is not None
            analyze(system.dsn, system.postgres_table)
        system.start_workers()
        start_at = options.backlog * 95 // 100
        deadline = time.monotonic() + options.timeout_s
        while (left := system.remaining()) > start_at and time.monotonic() < deadline:
            time.sleep(0.005)
        t0, left0 = time.perf_counter(), left
        stop_at = time.perf_counter() + options.drain_seconds
        while left and time.perf_counter() < stop_at:
            time.sleep(0.01)
            left = system.remaining()
        rate = (left0 - left) / (time.perf_counter() - t0)
        figures.add(system.name, LOADS[6] if analyzed else LOADS[5], rate)
    finally:
        system.stop()


def run_round(names: Sequence[str], options: Options, figures: Figures) -> None:
    makers = all_systems()
    for name in names:
        make = makers[name]
        system = make()
        figures.durability[system.name] = system.durability
        steps: list[tuple[str, Callable[[], None]]] = [
            ("running loads", partial(measure_new, make, options, figures)),
            ("drain, fresh", partial(measure_drain, make, False, options, figures))]
        if system.postgres_table is not None:
            steps.append(("drain, after ANALYZE",
                          partial(measure_drain, make, True, options, figures)))
        if name.startswith("titanic"):
            steps.extend((f"waiting, analyzed={analyzed}",
                          partial(measure_with_waiting, make, analyzed, options, figures))
                         for analyzed in ((False, True) if system.postgres_table else (False,)))
        for what, step in steps:
            guarded(figures, system.name, what, step)


def guarded(figures: Figures, system: str, what: str, action: Callable[[], None]) -> None:
    """Run one measurement; a failure (another program restarting the database server, say)
    is reported, the measurement tried once more, and the run goes on."""
    for attempt in (1, 2):
        kept = {key: len(values) for key, values in figures.values.items()}
        try:
            action()
            return
        except Exception as exc:  # noqa: BLE001  (reported, not hidden)
            for key, values in figures.values.items():  # a failed try's figures are dropped
                del values[kept.get(key, 0):]
            line = (f"{system}, {what} (try {attempt}): {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
            figures.errors.append(line)
            print(f"  FAILED {line}", file=sys.stderr, flush=True)


def measure_new(make: Callable[[], System], options: Options, figures: Figures) -> None:
    system = make()
    system.start()
    try:
        system.start_workers()
        measure_running(system, options, figures)
        for part, p50 in system.floor(options.sync_jobs).items():
            figures.add(system.name, f"floor: {part}, p50 ms", p50)
    finally:
        system.stop()


def measure_with_waiting(make: Callable[[], System], analyzed: bool, options: Options,
                         figures: Figures) -> None:
    """titanic's running loads again, with a backlog waiting for a service without workers."""
    system = make()
    system.start()
    try:
        system.fill(options.backlog, service="nobody")
        if analyzed:
            assert system.postgres_table is not None
            analyze(system.dsn, system.postgres_table)
        system.start_workers()
        measure_running(system, options, figures,
                        WAITING_ANALYZED if analyzed else WAITING_FRESH)
    finally:
        system.stop()


def table(figures: Figures, names: Sequence[str]) -> str:
    systems = list(dict.fromkeys(system for system, _ in figures.values))
    lines = ["| load | " + " | ".join(systems) + " |",
             "|---|" + "---:|" * len(systems)]
    floors = [f"floor: {part}, p50 ms" for part in FLOOR_PARTS]
    parts = list(dict.fromkeys(load for _, load in figures.values if load.startswith(CPU_PART)))
    for load in LOADS[:2] + list(INSIDE) + LOADS[2:5] + parts + LOADS[5:] + floors + [
            load + suffix for suffix in (WAITING_FRESH, WAITING_ANALYZED) for load in LOADS[:5]]:
        cells = []
        for system in systems:
            values = figures.values.get((system, load))
            if not values:
                cells.append("–")
                continue
            median = statistics.median(values)
            digits = 3 if " ms" in load else 0
            cell = f"{median:,.{digits}f}"
            if len(values) > 1:
                cell += f" [{min(values):,.{digits}f}–{max(values):,.{digits}f}]"
            cells.append(cell)
        if any(cell != "–" for cell in cells):
            lines.append(f"| {load} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {system}: {figures.durability[system]}" for system in systems]
    return "\n".join(lines)


def ratios(figures: Figures) -> str:
    """The issue's targets, as ratios of medians measured in this run, for titanic with a
    dispatcher of its own and with the dispatcher in the broker, where measured."""
    systems = {s for s, _ in figures.values}
    parts = []
    for suffix, heading in (("", "titanic, a dispatcher of its own:"),
                            (HOSTED, "titanic, the dispatcher in the broker:")):
        pg, lite = "titanic PostgreSQL" + suffix, "titanic SQLite FULL" + suffix
        if pg in systems or lite in systems:
            parts.append(heading + "\n" + _ratios(figures, lite, pg))
    return "\n\n".join(parts)


def _ratios(figures: Figures, lite: str, pg: str) -> str:
    def median(system: str, load: str) -> float | None:
        values = figures.values.get((system, load))
        return statistics.median(values) if values else None

    peers = [s for s in dict.fromkeys(s for s, _ in figures.values) if not s.startswith("titanic")]
    pg_peers = [s for s in peers if "pgqueuer" in s or "procrastinate" in s]
    lines = []

    def ratio(what: str, num: float | None, den: float | None, least: float) -> None:
        if num is None or not den:
            return
        verdict = "met" if num / den >= least else "MISSED"
        lines.append(f"{what:62} {num / den:6.2f}x (at least {least:g}x) {verdict}")

    def best(loads: str, among: list[str]) -> float | None:
        found = [v for v in (median(s, loads) for s in among) if v is not None]
        return max(found) if found else None

    asyncpg = "pgqueuer (asyncpg)"
    ratio("one producer, PostgreSQL vs pgqueuer (asyncpg)", median(pg, LOADS[0]),
          median(asyncpg, LOADS[0]), 1.2)
    ratio("one producer, SQLite FULL vs RQ", median(lite, LOADS[0]),
          median("RQ (Redis, RAM only)", LOADS[0]), 1.0)
    floor = [median(lite, f"floor: {part}, p50 ms") for part in FLOOR_PARTS]
    p50 = median(lite, LOADS[1])
    if p50 is not None and None not in floor:
        total = sum(f for f in floor if f is not None)
        verdict = "met" if p50 <= 1.3 * total else "MISSED"
        lines.append(f"{'one producer, SQLite FULL p50 vs its floor':62} {p50 / total:6.2f}x "
                     f"(at most 1.3x; floor {total:.3f} ms) {verdict}")
    ratio("32 at once, PostgreSQL vs pgqueuer (asyncpg)", median(pg, LOADS[2]),
          median(asyncpg, LOADS[2]), 3.0)
    ratio("end to end, PostgreSQL vs best PostgreSQL peer", median(pg, LOADS[3]),
          best(LOADS[3], pg_peers), 2.0)
    ratio("end to end, SQLite vs best peer", median(lite, LOADS[3]), best(LOADS[3], peers), 4.0)
    ratio("drain after ANALYZE, PostgreSQL vs pgqueuer (asyncpg)", median(pg, LOADS[6]),
          median(asyncpg, LOADS[6]), 1.2)
    for system, ceiling in ((lite, 200.0), (pg, 300.0)):
        cpu = median(system, LOADS[4])
        if cpu is not None:
            verdict = "met" if cpu <= ceiling else "MISSED"
            lines.append(f"{'CPU per end-to-end job, ' + system:62} {cpu:6.0f} µs "
                         f"(at most {ceiling:g}) {verdict}")
    for system in (lite, pg):
        for load in (LOADS[5], LOADS[6]):
            ratio(f"drain ({load.split(', ')[1]}) vs end to end, {system}",
                  median(system, load), median(system, LOADS[3]), 0.8)
        for suffix in (WAITING_FRESH, WAITING_ANALYZED):
            for load in (LOADS[0], LOADS[2], LOADS[3]):
                ratio(f"{load.split(',')[0]}{suffix} vs empty, {system}",
                      median(system, load + suffix), median(system, load), 0.8)
    return "\n".join(lines)


def python_loop_seconds() -> float:
    """How fast this machine runs Python now: seconds for 10 million additions in a loop
    (the CPU figures in µs scale with it)."""
    started = time.process_time()
    total = 0
    for number in range(10_000_000):
        total += number
    return time.process_time() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(all_systems()),
                        help="systems to run (default: all)")
    parser.add_argument("--backlog", type=int, default=Options.backlog)
    parser.add_argument("--drain-seconds", type=float, default=Options.drain_seconds)
    parser.add_argument("--sync-jobs", type=int, default=Options.sync_jobs)
    parser.add_argument("--end-to-end-jobs", type=int, default=Options.end_to_end_jobs)
    args = parser.parse_args(argv)
    options = Options(sync_jobs=args.sync_jobs, end_to_end_jobs=args.end_to_end_jobs,
                      backlog=args.backlog, drain_seconds=args.drain_seconds)
    names = args.only or list(all_systems())
    figures = Figures()
    started = datetime.now(UTC)
    speeds = [python_loop_seconds()]
    for number in range(args.rounds):
        print(f"round {number + 1} of {args.rounds}", file=sys.stderr, flush=True)
        order = names if number % 2 == 0 else list(reversed(names))
        run_round(order, options, figures)
        speeds.append(python_loop_seconds())
        print(f"round {number + 1} done; 10 million additions took {speeds[-1]:.2f} s of CPU",
              file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    print(f"{started:%Y-%m-%d %H:%M} UTC, commit {commit}, {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f} at the end; 10 million additions in a "
          f"Python loop took {', '.join(f'{s:.2f}' for s in speeds)} s of CPU before the "
          "first round and after each")
    print(table(figures, names))
    print()
    print(ratios(figures))
    if figures.errors:
        print("\nnot measured:\n" + "\n".join(f"- {line}" for line in figures.errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
