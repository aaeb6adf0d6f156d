"""The planner benchmark runs its turns to the end on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from titanic.bench.planner import measure
from titanic.store import RequestStatus, open_store


def test_the_planner_benchmark_completes_every_request(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/bench.db")
    try:
        cost = measure(store, 40, 8)  # raises unless every request was answered and stored
        counts = store.stats().counts
    finally:
        store.close_store()
    assert counts == {("echo", RequestStatus.DONE): 41}  # the first request included
    assert cost.cpu_us > 0 and cost.wall_us > 0
