"""The owner index holds only requests with an owner, and the per-key count still reads it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text

from titanic.store import NewRequest, open_store
from titanic.store.models import requests_table

INDEX = "ix_titanic_requests_owner_status"
OWNER = "k" * 40


def test_unfinished_by_owner_reads_the_partial_owner_index(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.submit_many([NewRequest("echo", (b"x",))] * 500)  # no owner: not in the index
        store.submit_many([NewRequest("echo", (b"x",), owner=OWNER)] * 3)
        seen: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any,
                    context: Any, executemany: bool) -> None:
            if "count(" in statement and "owner" in statement:
                seen.append((statement, parameters))

        event.listen(store.engine, "before_cursor_execute", capture)
        try:
            assert store.unfinished_by_owner([OWNER, "nobody"]) == {OWNER: 3}
        finally:
            event.remove(store.engine, "before_cursor_execute", capture)
        assert len(seen) == 1
        statement, parameters = seen[0]
        with store.engine.connect() as conn:
            if store.engine.dialect.name == "sqlite":
                definition = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = :n"),
                                          {"n": INDEX}).scalar_one()
                plan = " ".join(row[3] for row in conn.exec_driver_sql(
                    f"EXPLAIN QUERY PLAN {statement}", parameters))
            else:
                definition = conn.execute(text("SELECT indexdef FROM pg_indexes "
                                               "WHERE indexname = :n"), {"n": INDEX}).scalar_one()
                # Tiny tables are read sequentially when allowed: ask whether the index can
                # answer the query at all.
                conn.exec_driver_sql("SET enable_seqscan = off")
                plan = " ".join(row[0] for row in conn.exec_driver_sql(
                    f"EXPLAIN {statement}", parameters))
        assert "owner IS NOT NULL" in definition, definition
        assert INDEX in plan, plan
        assert requests_table.name in definition
    finally:
        store.close_store()
