"""Dispatcher turns without sockets: the CPU a turn costs per request, over a real store.

    python -m titanic.bench.planner [--db URL] [--requests 2000] [--per-turn 1 8]
                                    [--rounds 3]

`titanic.dispatch.planner.Planner` runs over a store opened from --db (default: a new SQLite file,
synchronous=FULL; a PostgreSQL database named there should be the benchmark's alone, as its
"echo" requests are claimed) and `titanic.testing.MemoryTransport`. Each turn brings --per-turn new
requests for "echo" and the replies to everything forwarded the turn before, as a dispatcher
under a steady load sees them; the figure is the CPU time of this thread per request (the
store's work included, the database server's not) and the wall time per request. No broker,
worker or socket takes part, so the figures hold still on a busy machine better than the
end-to-end ones; compare them within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from titanic.dispatch.planner import Planner, PresenceCheck
from titanic.dispatch.settings import DispatcherSettings, DispatcherStats
from titanic.protocol.mdp import Frames
from titanic.store import Store, open_store
from titanic.testing import MemoryTransport

BODY: Frames = [b"echo", b"x" * 100]
REPLY = [b"x" * 100]


@dataclass(frozen=True)
class TurnCost:
    """Per request: CPU time of the planner's thread and wall time, in microseconds."""

    cpu_us: float
    wall_us: float


def measure(store: Store, requests: int, per_turn: int) -> TurnCost:
    """Run `requests` requests through a planner, `per_turn` new ones a turn."""
    transport = MemoryTransport(64)
    stats = DispatcherStats()
    planner = Planner(store, transport, DispatcherSettings(), stats)
    answers: list[Frames] = []
    now = 1000.0

    def turn(submits: Sequence[Frames]) -> None:
        nonlocal now
        now += 0.001
        # Answer everything in flight: mmi.service says present, the service echoes.
        completions = [transport.complete(tag, [b"200"] if isinstance(tag, PresenceCheck)
                                          else REPLY) for tag in transport.in_flight]
        planner.turn(submits, completions, now, answer=answers.extend)

    turn([BODY])  # the first request, and the mmi.service question its service brings
    turn([])
    turn([])
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(requests // per_turn):
        turn([BODY] * per_turn)
    # The last forwards (kept for a next submission: forward_linger), then their replies (one
    # turn brings them, the linger's end stores them).
    for _ in range(3):
        now += 1.0
        turn([])
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    sent = requests // per_turn * per_turn
    if stats.completed != sent + 1:  # the first request included
        raise RuntimeError(f"{stats.completed} of {sent + 1} requests completed")
    return TurnCost(cpu / sent * 1e6, wall / sent * 1e6)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="database URL, for the benchmark alone "
                        "(default: a new SQLite file)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--per-turn", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'new requests per turn':>22} {'CPU µs/request':>15} {'wall µs/request':>16}")
    with tempfile.TemporaryDirectory() as folder:
        for per_turn in args.per_turn:
            costs = []
            for number in range(args.rounds):
                url = args.db or f"sqlite:///{folder}/planner-{per_turn}-{number}.db"
                store = open_store(url)
                try:
                    costs.append(measure(store, args.requests, per_turn))
                finally:
                    store.close_store()
            print(f"{per_turn:>22} {statistics.median(c.cpu_us for c in costs):15.1f} "
                  f"{statistics.median(c.wall_us for c in costs):16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
