"""How long the `titanic` command takes, start to exit, as a person at a shell sees it.

    python -m titanic.bench.cli [--runs 25]

Starts `titanic up --demo` on a SQLite file in a temporary folder (or measures a running broker
with `--broker ENDPOINT --db URL`), then runs each command below `--runs` times, one after the
other, and prints the median, the 90th percentile and the fastest run of each. Client commands
(`submit`, `fetch`) talk to the broker; `status` and `list` read the database directly. The
targets are the figures a new user should not notice: a client command within 0.15 s, a command
reading SQLite within 0.35 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from titanic.bench.common import free_port, stop_all

#: Seconds each command should take at most (median), by its row name.
TARGETS = {"submit": 0.15, "status": 0.35, "list": 0.35}
#: Seconds `titanic up` gets to answer before the benchmark gives up.
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Timing:
    """One command's wall-clock times over several runs, in seconds."""

    name: str
    seconds: Sequence[float]

    @property
    def median(self) -> float:
        """The median run."""
        return statistics.median(self.seconds)

    @property
    def p90(self) -> float:
        """The run 90 % of runs were at least as fast as."""
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def titanic_argv(*args: str) -> list[str]:
    """The installed `titanic` command beside this interpreter (as a user runs it), else
    `python -m titanic_cli`."""
    script = Path(sys.executable).parent / "titanic"
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "titanic_cli", *args]


def run_once(argv: Sequence[str], env: dict[str, str]) -> tuple[float, bytes]:
    """Run a command to its end: its wall-clock seconds and its stdout; RuntimeError with its
    stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(list(argv), env=env, capture_output=True, timeout=60, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[-3:])} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")
    return elapsed, done.stdout


def time_command(name: str, argv: Sequence[str], env: dict[str, str], runs: int) -> Timing:
    """`runs` timed runs of a command, after one untimed run that warms the file cache."""
    run_once(argv, env)
    return Timing(name, [run_once(argv, env)[0] for _ in range(runs)])


@contextmanager
def running_up(folder: Path) -> Iterator[tuple[str, str]]:
    """`titanic up --demo` on a SQLite file in `folder`: its broker endpoint and database URL,
    once the echo worker is registered."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    database = folder / "titanic.db"
    log = (folder / "up.log").open("wb")
    process = subprocess.Popen(titanic_argv("up", "--demo", "--bind", endpoint,
                                            "--db", str(database)),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_echo(endpoint, process)
        yield endpoint, str(database)
    finally:
        stop_all([process])
        log.close()


def _wait_for_echo(endpoint: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"titanic up exited {process.returncode} (see its log)")
        probe = subprocess.run(titanic_argv("mmi", "echo", "--broker", endpoint,
                                            "--timeout", "1", "--retries", "0"),
                               capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"titanic up did not serve 'echo' within {START_TIMEOUT_S:.0f} s")


def measure(endpoint: str, db_url: str, runs: int) -> list[Timing]:
    """Each command's timings against a broker serving 'echo' and Titanic on `db_url`."""
    env = {**os.environ, "TITANIC_BROKER": endpoint, "TITANIC_DATABASE_URL": db_url}
    _, out = run_once(titanic_argv("submit", "echo", "x"), env)
    request_id = out.decode().strip()
    run_once(titanic_argv("fetch", "--wait", "--timeout", "30", request_id), env)
    commands = [
        ("--version", titanic_argv("--version")),
        ("submit", titanic_argv("submit", "echo", "x")),
        ("fetch", titanic_argv("fetch", request_id)),
        ("status", titanic_argv("status", request_id)),
        ("list", titanic_argv("list", "--limit", "20")),
    ]
    return [time_command(name, argv, env, runs) for name, argv in commands]


def format_timings(timings: Sequence[Timing]) -> str:
    """A plain-text table: command, median, 90th percentile, fastest, target."""
    lines = [f"{'titanic ...':12} {'median s':>9} {'p90 s':>7} {'min s':>7}  target"]
    for timing in timings:
        target = TARGETS.get(timing.name)
        verdict = "" if target is None else (
            f"<= {target:.2f} {'ok' if timing.median <= target else 'OVER'}")
        lines.append(f"{timing.name:12} {timing.median:9.3f} {timing.p90:7.3f} "
                     f"{min(timing.seconds):7.3f}  {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; exit 1 if a median is over its target."""
    parser = argparse.ArgumentParser(prog="python -m titanic.bench.cli",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=25, help="timed runs of each command")
    parser.add_argument("--broker", help="measure this running broker instead of starting one")
    parser.add_argument("--db", help="with --broker: its database URL (status and list read it)")
    options = parser.parse_args(argv)
    if (options.broker is None) != (options.db is None):
        parser.error("--broker and --db go together")
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    if options.broker is not None:
        timings = measure(options.broker, options.db, options.runs)
    else:
        with tempfile.TemporaryDirectory(prefix="titanic-bench-cli-") as folder, \
                running_up(Path(folder)) as (endpoint, db_url):
            timings = measure(endpoint, db_url, options.runs)
    print(f"titanic command wall-clock times, {options.runs} runs each "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(format_timings(timings))
    return 0 if all(t.median <= TARGETS.get(t.name, float("inf")) for t in timings) else 1


if __name__ == "__main__":
    sys.exit(main())
