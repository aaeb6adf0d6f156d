"""The request row codec: times and keys in each dialect's encoding, UTC, UUID checks, records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.dialects import sqlite

from titanic.errors import InvalidRequestError, StoreError
from titanic.store.crypto import REPLY, REQUEST, PlainBodies, bodies_for, write_store_key
from titanic.store.models import requests_table
from titanic.store.rows import (
    COLUMNS,
    CoreValues,
    PostgresValues,
    SqliteValues,
    Values,
    aware_utc,
    naive_utc,
    new_row,
    record,
    request_key,
    utcnow,
    values_for,
)
from titanic.store.types import RequestStatus, new_request_id

MOMENTS = [datetime(2026, 12, 1, 9, 30, 5, 123456), datetime(1999, 1, 2, 3, 4, 5),
           datetime(2026, 12, 1, 9, 30, 5, 123457), datetime(9999, 12, 31, 23, 59, 59, 999999)]
ENCODINGS: list[Values] = [SqliteValues, PostgresValues, CoreValues]
BODY = (b"hello", b"", b"\x00\xff")


@pytest.mark.parametrize("values", ENCODINGS)
def test_times_and_keys_round_trip_in_every_encoding(values: Values) -> None:
    for moment in MOMENTS:
        assert values.read_time(values.time(moment)) == moment
    assert values.time(None) is None and values.read_time(None) is None
    request_id = new_request_id()
    assert values.read_key(values.key(request_id)) == request_id


def test_sqlite_values_are_what_sqlalchemy_writes_for_these_columns() -> None:
    dialect = sqlite.dialect()
    write_time = requests_table.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    write_key = requests_table.c.id.type.dialect_impl(dialect).bind_processor(dialect)
    assert write_time is not None and write_key is not None
    for moment in MOMENTS:
        assert SqliteValues.time(moment) == write_time(moment)
    request_id = new_request_id()
    assert SqliteValues.key(request_id) == write_key(uuid.UUID(hex=request_id))


def test_sqlite_time_text_sorts_in_time_order() -> None:
    assert sorted(MOMENTS) == sorted(MOMENTS, key=SqliteValues.time)


def test_postgres_keys_are_uuids_and_read_back_from_text_too() -> None:
    request_id = new_request_id()
    key = PostgresValues.key(request_id)
    assert isinstance(key, uuid.UUID) and key.hex == request_id
    assert PostgresValues.read_key(str(key)) == request_id  # a driver handing back text


def test_each_dialect_gets_its_driver_encoding() -> None:
    assert values_for("sqlite") is SqliteValues
    assert values_for("postgresql") is PostgresValues


def test_naive_utc_converts_aware_times_and_keeps_naive_ones() -> None:
    paris = timezone(timedelta(hours=1))
    assert naive_utc(datetime(2026, 12, 1, 10, 0, tzinfo=paris)) == datetime(2026, 12, 1, 9, 0)
    assert naive_utc(datetime(2026, 12, 1, 10, 0)) == datetime(2026, 12, 1, 10, 0)
    assert naive_utc(None) is None


def test_aware_utc_marks_a_stored_time_as_utc() -> None:
    moment = aware_utc(datetime(2026, 12, 1, 9, 0))
    assert moment == datetime(2026, 12, 1, 9, 0, tzinfo=UTC) and moment.tzinfo is UTC
    assert aware_utc(None) is None
    assert naive_utc(aware_utc(MOMENTS[0])) == MOMENTS[0]


def test_utcnow_is_naive_utc() -> None:
    now = utcnow()
    assert now.tzinfo is None
    assert abs(now.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(seconds=5)


def test_a_request_key_accepts_both_uuid_forms() -> None:
    request_id = new_request_id()
    hyphenated = str(uuid.UUID(hex=request_id)).upper()
    assert request_key(request_id) == request_key(hyphenated) == uuid.UUID(hex=request_id)


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "0" * 31, "g" * 32])
def test_a_bad_request_id_is_refused_as_an_invalid_request(bad: str) -> None:
    with pytest.raises(InvalidRequestError, match="not a request UUID"):
        request_key(bad)


@pytest.mark.parametrize("values", ENCODINGS)
def test_a_new_row_reads_back_as_the_request_stored(values: Values) -> None:
    request_id, now = new_request_id(), MOMENTS[0]
    deadline = now + timedelta(minutes=5)
    bodies = PlainBodies()
    row = new_row(values, request_id, "echo", bodies.pack(request_id, REQUEST, BODY), now,
                  deadline, "key-1", "alice")
    assert len(row) == len(COLUMNS)
    stored = record(row, values, bodies)
    assert (stored.id, stored.service, stored.request, stored.reply) == (request_id, "echo",
                                                                          BODY, None)
    assert (stored.status, stored.attempts) == (RequestStatus.PENDING, 0)
    assert stored.created_at == stored.due_at == now.replace(tzinfo=UTC)
    assert stored.deadline == deadline.replace(tzinfo=UTC)
    assert (stored.lease_until, stored.completed_at, stored.last_error) == (None, None, None)
    assert (stored.idempotency_key, stored.owner) == ("key-1", "alice")


def _done_row(values: Values, bodies: PlainBodies, request_id: str) -> tuple[object, ...]:
    row = dict(zip(COLUMNS, new_row(values, request_id, "echo",
                                    bodies.pack(request_id, REQUEST, BODY), MOMENTS[0], None,
                                    None), strict=True))
    row.update(reply=bodies.pack(request_id, REPLY, (b"done",)), status="done", attempts=1,
               completed_at=values.time(MOMENTS[2]))
    return tuple(row[name] for name in COLUMNS)


def test_sealed_bodies_are_opened_with_the_store_key(tmp_path: Path) -> None:
    key_file = tmp_path / "store.key"
    write_store_key(key_file)
    sealed, request_id = bodies_for(key_file), new_request_id()
    row = _done_row(SqliteValues, sealed, request_id)
    blob = row[COLUMNS.index("request")]
    assert isinstance(blob, bytes) and BODY[0] not in blob
    stored = record(row, SqliteValues, sealed)
    assert (stored.request, stored.reply) == (BODY, (b"done",))
    assert stored.status is RequestStatus.DONE
    assert stored.completed_at == MOMENTS[2].replace(tzinfo=UTC)
    with pytest.raises(StoreError, match="encrypted"):
        record(row, SqliteValues, PlainBodies())  # no key: refused, not returned as garbage


def test_core_and_driver_rows_of_one_sqlite_table_give_the_same_record() -> None:
    engine = create_engine("sqlite://")
    requests_table.metadata.create_all(engine)
    bodies, request_id = PlainBodies(), new_request_id()
    columns = ", ".join(COLUMNS)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"INSERT INTO {requests_table.name} ({columns}) "
                f"VALUES ({', '.join('?' * len(COLUMNS))})",
                _done_row(SqliteValues, bodies, request_id))
            core = conn.execute(select(requests_table)).one()
            driver = conn.exec_driver_sql(f"SELECT {columns} FROM {requests_table.name}").one()
        from_core = record(core, CoreValues, bodies)
        assert from_core == record(tuple(driver), SqliteValues, bodies)
        assert from_core.id == request_id and from_core.reply == (b"done",)
    finally:
        engine.dispose()
