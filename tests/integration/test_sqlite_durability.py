"""SQLite: which commits wait for an fsync. New requests are committed with the store's
synchronous level (FULL: an fsync before the UUID is returned); replies, claims and leases,
which a lease recovers if lost, without one (NORMAL); all on one connection per thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from titanic.store import NewRequest, SqlStore, open_store

FULL, NORMAL = 2, 1


class CommitLevels:
    """Follows every connection the store checks out: the synchronous level of each COMMIT."""

    def __init__(self, store: SqlStore, level: int) -> None:
        self.commits: list[int] = []
        self.connections: set[int] = set()
        self._level: dict[int, int] = {}
        self._start = level
        event.listen(store.engine, "checkout", self._checkout)

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        key = id(dbapi_connection)
        self.connections.add(key)
        self._level.setdefault(key, self._start)

        def trace(statement: str) -> None:
            text = statement.strip().upper()
            if text.startswith("PRAGMA SYNCHRONOUS="):
                self._level[key] = int(text.split("=", 1)[1])
            elif text == "COMMIT":
                self.commits.append(self._level[key])

        dbapi_connection.set_trace_callback(trace)


@pytest.mark.parametrize(("synchronous", "durable_level"), [("FULL", FULL), ("NORMAL", NORMAL)])
def test_new_requests_commit_with_the_store_level_the_rest_without_fsync(
        tmp_path: Path, synchronous: str, durable_level: int) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'titanic.db'}", sqlite_synchronous=synchronous)
    levels = CommitLevels(store, durable_level)
    try:
        first = store.exchange([NewRequest("echo", (b"a",))], [], {}, 10.0)
        assert levels.commits == [durable_level]
        claimed = store.exchange([], [], {"echo": 1}, 10.0)  # a claim alone
        assert [d.id for d in claimed.claimed] == first.ids
        store.exchange([], [(first.ids[0], [b"reply"])], {}, 10.0)  # a reply alone
        assert levels.commits == [durable_level, NORMAL, NORMAL]
        # A new request with a reply: the new request makes the commit durable.
        second = store.exchange([NewRequest("echo", (b"b",))], [], {"echo": 1}, 10.0)
        store.exchange([NewRequest("echo", (b"c",))], [(second.ids[0], [b"r"])], {}, 10.0)
        assert levels.commits[3:] == [durable_level, durable_level]
        stored = store.get(second.ids[0])
        assert stored is not None and stored.reply == (b"r",)
        # Every transaction of this thread ran on one connection.
        assert len(levels.connections) == 1
    finally:
        store.close_store()
