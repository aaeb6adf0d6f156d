"""SQLite: a dispatcher turn's statements on the driver's connection, without SQLAlchemy.

A turn stores new requests, stores replies and claims due requests in one immediate
transaction. Run through SQLAlchemy's Connection, its begin and commit events, execution
context and result objects cost about 100 µs of CPU per transaction here, more than the
statements themselves. The hot statements are already driver SQL (titanic.store.hot), so here
they run on the sqlite3 connection under SqlStore's thread connection: `BEGIN IMMEDIATE`, the
statements, `COMMIT`. SqlStore still translates errors and retries, as for any transaction;
everything else stays on SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from titanic.store.hot import HotStatements
from titanic.store.pipeline import LIMITED_SQL, Turn
from titanic.store.rows import DELIVERY_COLUMNS
from titanic.store.types import Delivery


@contextmanager
def immediate(raw: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One transaction holding the write lock from its start (as SqlStore's writes take it):
    committed at the end of the block, rolled back if the block raises."""
    raw.execute("BEGIN IMMEDIATE")
    try:
        yield raw
    except BaseException:
        if raw.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the caller forgets this connection
                raw.execute("ROLLBACK")
        raise
    raw.execute("COMMIT")


def run_turn(raw: sqlite3.Connection, hot: HotStatements,
             turn: Turn) -> tuple[int, int, list[Delivery]]:
    """Run a turn inside an open transaction; how many rows it inserted, how many replies it
    stored, and the requests it claimed (oldest first per service). Raises sqlite3's errors."""
    v = hot.values
    inserted = completed = 0
    if turn.rows:
        inserted = raw.executemany(hot.insert_keyed_sql if turn.keyed else hot.insert_sql,
                                   turn.rows).rowcount
    if turn.parts:
        raw.executemany(hot.part_sql, hot.part_params(turn.parts))
    if turn.trims:
        raw.executemany(hot.trim_sql, hot.trim_params(turn.trims))
    if turn.replies:
        moment = v.time(turn.now)
        # executemany's rowcount is the sum over its parameter sets.
        completed = raw.executemany(hot.complete_sql, [(reply, moment, v.key(request_id))
                                                       for request_id, reply
                                                       in turn.replies]).rowcount
    if turn.read_limits:
        turn.limited.extend(row[0] for row in raw.execute(LIMITED_SQL))
    claimed: list[Delivery] = []
    for service, room in turn.claims:
        sql, params = hot.claim_statement([service], room, turn.lease_until, turn.now,
                                          DELIVERY_COLUMNS)
        deliveries, unopenable = hot.open_deliveries(raw.execute(sql, params).fetchall())
        for request_id, error in unopenable:
            raw.execute(hot.fail_sql, hot.fail_params(request_id, error, turn.now))
        claimed.extend(deliveries)
    return inserted, completed, claimed


def all_stored(raw: sqlite3.Connection, hot: HotStatements,
               request_ids: Sequence[str]) -> bool:
    """Whether every one of these requests is stored (a retried commit whose first try did
    land: its inserts then fail as duplicates)."""
    keys = [hot.values.key(request_id) for request_id in request_ids]
    marks = ", ".join("?" * len(keys))
    row = raw.execute(f"SELECT count(*) FROM {hot.table} WHERE id IN ({marks})",
                      keys).fetchone()
    return row is not None and row[0] == len(keys)


def stored_keys(raw: sqlite3.Connection, hot: HotStatements,
                keys: Sequence[str]) -> dict[str, str]:
    """The UUIDs stored under these idempotency keys."""
    marks = ", ".join("?" * len(keys))
    rows = raw.execute(f"SELECT idempotency_key, id FROM {hot.table} "
                       f"WHERE idempotency_key IN ({marks})", list(keys)).fetchall()
    return {key: hot.values.read_key(row_id) for key, row_id in rows}


def is_duplicate(exc: BaseException) -> bool:
    """A unique key violated (a request id already stored)."""
    return isinstance(exc, sqlite3.IntegrityError)


def is_retryable(exc: sqlite3.Error) -> bool:
    """Lock contention that outlasted the busy timeout."""
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text
