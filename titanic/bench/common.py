"""What every benchmark shares: results, helper processes, the table."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Result:
    """A measured rate with per-request latency percentiles."""

    name: str
    requests: int
    seconds: float
    latencies: Sequence[float]

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency at quantile q, in milliseconds."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class _Done(Protocol):
    """A finished pipelined request, as the MDP and freelance clients give it."""

    @property
    def tag(self) -> Hashable: ...

    @property
    def error(self) -> Exception | None: ...


def timed_pipeline(run: Callable[[Iterator[tuple[bytes, list[bytes]]]], Iterable[_Done]],
                   service: bytes, body: bytes, requests: int, depth: int) -> Result:
    """`requests` requests for `service` through `run` (a client's pipelined form, given the
    requests and yielding their completions, each tagged with its index), each timed from
    when `run` takes it to its completion."""
    latencies: list[float] = []
    sent_at: dict[Any, float] = {}

    def stamped() -> Iterator[tuple[bytes, list[bytes]]]:
        for index in range(requests):
            sent_at[index] = time.perf_counter()
            yield service, [body]

    started = time.perf_counter()
    for completion in run(stamped()):
        if completion.error is not None:
            raise completion.error
        latencies.append(time.perf_counter() - sent_at.pop(completion.tag))
    seconds = time.perf_counter() - started
    return Result(f"pipelined, {depth} in flight", requests, seconds, latencies)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_percent(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU use, in percent of one core, over `seconds` of doing nothing."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: (cpu_seconds(pid) - before[name]) / seconds * 100
            for name, pid in pids.items()}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(args: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start a helper process, its output discarded."""
    return subprocess.Popen(list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop_all(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process, then SIGKILL what is still running after 3 s."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    for proc in processes:
        try:
            proc.wait(max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def titanic_command(*args: str) -> list[str]:
    """argv running the titanic CLI with this interpreter."""
    return [sys.executable, "-P", "-m", "titanic_cli", *args]


def format_table(rows: Sequence[tuple[str, Result]]) -> str:
    """A plain-text table of results."""
    lines = [f"{'broker':30} {'load':28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"]
    for broker, result in rows:
        lines.append(f"{broker:30} {result.name:28} {result.rate:9.0f} "
                     f"{result.percentile(0.5):8.3f} {result.percentile(0.99):8.3f}")
    return "\n".join(lines)
