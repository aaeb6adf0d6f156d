"""SQLite: the dispatcher's turn on the driver connection (titanic.store.sqlite_turn)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta

import pytest

from titanic.store import NewRequest, RequestStatus, open_store, sqlite_turn
from titanic.store.crypto import REQUEST
from titanic.store.pipeline import Turn
from titanic.store.rows import new_row, utcnow
from titanic.store.sql import NewBatch, SqlStore
from titanic.store.sqlite_turn import immediate, run_turn
from titanic.store.types import new_request_id


@pytest.fixture
def sql_store(sqlite_url: str) -> Iterator[SqlStore]:
    store = open_store(sqlite_url)
    yield store
    store.close_store()


def _count(sqlite_url: str) -> int:
    with closing(sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))) as conn:
        return int(conn.execute("SELECT count(*) FROM titanic_requests").fetchone()[0])


def _batch(store: SqlStore, *requests: NewRequest) -> tuple[NewBatch, Turn]:
    ids = [new_request_id() for _ in requests]
    now = utcnow()
    pack = store.bodies.pack
    rows = [new_row(store._hot.values, request_id, r.service,
                    pack(request_id, REQUEST, r.frames), now, None, r.idempotency_key)
            for request_id, r in zip(ids, requests, strict=True)]
    batch = NewBatch.of(requests, ids, rows)
    return batch, Turn(batch.rows, [], [], now, now + timedelta(seconds=15), batch.keyed)


def test_a_failed_turn_leaves_nothing_stored(sql_store: SqlStore, sqlite_url: str) -> None:
    _, turn = _batch(sql_store, NewRequest("svc", (b"a",)), NewRequest("svc", (b"b",)))
    raw = sql_store._thread_connection(True).connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)

    def turn_then_fail() -> None:
        with immediate(raw):
            assert run_turn(raw, sql_store._hot, turn)[0] == 2
            raw.execute("SELECT * FROM no_such_table")

    with pytest.raises(sqlite3.OperationalError):
        turn_then_fail()
    assert not raw.in_transaction
    assert _count(sqlite_url) == 0


def test_a_turn_run_again_after_its_commit_landed_answers_the_same_ids(
        sql_store: SqlStore, sqlite_url: str) -> None:
    sql_store.submit("svc", [b"due"])
    batch, turn = _batch(sql_store, NewRequest("svc", (b"a",)))
    turn = Turn(turn.rows, [], [("svc", 5)], turn.now, turn.lease_until)
    with sql_store._sqlite_turn_connection(durable=True) as raw:
        first = sql_store._run_driver_turn(sqlite_turn, raw, batch, turn)
    with sql_store._sqlite_turn_connection(durable=True) as raw:
        again = sql_store._run_driver_turn(sqlite_turn, raw, batch, turn)
    assert first.ids == again.ids == batch.ids
    assert sorted(d.request for d in first.claimed) == [(b"a",), (b"due",)]
    assert again.claimed == []  # claimed by the first try, inserted once
    assert _count(sqlite_url) == 2
    stored = sql_store.get(batch.ids[0])
    assert stored is not None and stored.status is RequestStatus.DISPATCHED


def test_a_key_stored_before_answers_the_stored_id(sql_store: SqlStore) -> None:
    stored_id = sql_store.submit("svc", [b"a"], idempotency_key="k")
    result = sql_store.exchange([NewRequest("svc", (b"b",), idempotency_key="k"),
                                 NewRequest("svc", (b"c",))], [], {}, 15.0)
    assert result.ids[0] == stored_id
    assert result.ids[1] != stored_id
    fresh = sql_store.get(result.ids[1])
    assert fresh is not None and fresh.request == (b"c",)
