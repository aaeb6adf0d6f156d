"""Closing a store while other threads still use it: they finish or get StoreError, and the
process lives (SQLite's driver crashes the process when a connection is closed under a thread
that is using it)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from titanic.errors import StoreError
from titanic.store import SqlStore, open_store


def _busy(store: SqlStore, started: threading.Event, ended: list[BaseException]) -> None:
    try:
        for n in range(100_000):
            request_id = store.submit("svc", [str(n).encode()])
            store.get(request_id)
            started.set()
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        ended.append(exc)
    finally:
        started.set()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_closing_a_store_in_use_by_other_threads(engine: str, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'titanic.db'}" if engine == "sqlite"
           else request.getfixturevalue("postgres_url"))
    for _ in range(20):
        store = open_store(url)
        started = [threading.Event() for _ in range(3)]
        ended: list[BaseException] = []
        threads = [threading.Thread(target=_busy, args=(store, event, ended))
                   for event in started]
        for thread in threads:
            thread.start()
        for event in started:
            assert event.wait(30)
        store.close_store()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
        assert len(ended) == 3
        assert all(isinstance(exc, StoreError) and "closed" in str(exc) for exc in ended), ended
