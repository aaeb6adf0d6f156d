"""PostgreSQL: a dispatcher turn's statements in one round trip (psycopg's pipeline mode).

A turn stores new requests, stores replies and claims due requests. Through SQLAlchemy each of
BEGIN, every statement and COMMIT waits for its own answer from the server: three to eight
round trips. Here they are queued on the connection and sent together, ending with one Sync,
at which PostgreSQL commits them as one implicit transaction (the connection is in autocommit
mode, so no BEGIN or COMMIT is sent). A statement that fails rolls the whole turn back, as
before. Statements are prepared by psycopg after a few runs, so a turn sends only their
parameters. The new requests are one multi-row INSERT (per 64 rows), not a statement per
row: psycopg's pipeline sends each statement as a message of its own, and the client's CPU per
turn went with their number. The replies stay one primary-key UPDATE each (see run_turn). A
turn that only stores new requests (up to 64) is a single statement, sent without pipeline
mode: the same one round trip and one transaction, at about half the client's CPU (measured
2026-12-02 on a slow machine: a 1-row turn 0.36–0.50 → 0.25–0.39 ms, an 8-row turn 0.79–0.86
→ 0.44–0.48 ms).

A turn that stores no new request only moves leases and stores replies that their leases
would resend if lost, so its commit does not wait for the WAL to reach the disk
(`synchronous_commit` off for that transaction alone). A turn with new requests commits
durably before their UUIDs are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from titanic.store.hot import HotStatements
from titanic.store.rows import DELIVERY_COLUMNS, record
from titanic.store.types import Delivery, StoredRequest

if TYPE_CHECKING:  # psycopg is imported where a turn runs: only PostgreSQL stores need it
    import psycopg

#: Only for this transaction (is_local): the commit returns before the WAL is flushed.
_ASYNC_COMMIT = "SELECT set_config('synchronous_commit', 'off', true)"
#: The limited services (store.limits), read within a turn that claims when they are due to
#: be read again.
LIMITED_SQL = "SELECT service FROM titanic_service_limits"
#: Rows per INSERT statement at most (HotStatements.insert_rows_sql): a statement text for
#: each count up to this, each prepared by psycopg once it has run a few times.
_ROWS_PER_STATEMENT = 64


@dataclass(frozen=True)
class Turn:
    """What one pipelined turn sends: rows to insert (in COLUMNS order, converted), replies
    as (request id, packed reply), and claims as (service, how many)."""

    rows: Sequence[tuple[Any, ...]]
    replies: Sequence[tuple[str, bytes]]
    claims: Sequence[tuple[str, int]]
    now: datetime
    lease_until: datetime
    #: Whether rows carry idempotency keys: a key stored already is then skipped, not an error.
    keyed: bool = False
    #: Parts of streamed replies: (request id, part number, packed frames), stored before the
    #: replies; and (request id, last part number) whose later parts are deleted.
    parts: Sequence[tuple[str, int, bytes]] = ()
    trims: Sequence[tuple[str, int]] = ()
    #: Whether to read the limited services too (store.limits), into `limited`.
    read_limits: bool = False
    limited: list[str] = field(default_factory=list)

    @property
    def durable(self) -> bool:
        """Whether the commit must reach the disk before returning (new requests)."""
        return bool(self.rows)


def _insert(raw: psycopg.Connection[Any], hot: HotStatements,
            turn: Turn) -> list[psycopg.Cursor[Any]]:
    """Queue (or, outside a pipeline, run) the turn's rows as multi-row INSERTs, at most
    _ROWS_PER_STATEMENT rows each; their cursors tell how many were inserted."""
    import psycopg

    cursors: list[psycopg.Cursor[Any]] = []
    rows = turn.rows
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start:start + _ROWS_PER_STATEMENT]
        cursor = psycopg.RawCursor(raw)
        cursor.execute(hot.insert_rows_sql(len(chunk), keyed=turn.keyed),
                       [value for row in chunk for value in row])
        cursors.append(cursor)
    return cursors


def run_turn(raw: psycopg.Connection[Any], hot: HotStatements,
             turn: Turn) -> tuple[int, int, list[Delivery]]:
    """Run a turn in one round trip and one transaction; how many rows it inserted, how many
    replies it stored, and the requests it claimed (oldest first). Raises psycopg's errors
    (rolled back)."""
    if (turn.rows and len(turn.rows) <= _ROWS_PER_STATEMENT and not turn.replies
            and not turn.claims and not turn.parts and not turn.trims):
        # One statement: autocommit makes it its own durable transaction, and without
        # pipeline mode (entered, synced, flushed, left) it costs the client half the CPU.
        return sum(cursor.rowcount for cursor in _insert(raw, hot, turn)), 0, []
    v = hot.values
    moment = v.time(turn.now)
    completes = raw.cursor()
    claims: list[psycopg.Cursor[Any]] = []
    with raw.pipeline():
        if not turn.durable:
            raw.cursor().execute(_ASYNC_COMMIT)
        inserts = _insert(raw, hot, turn)
        if turn.parts:
            raw.cursor().executemany(hot.part_sql, hot.part_params(turn.parts))
        if turn.trims:
            raw.cursor().executemany(hot.trim_sql, hot.trim_params(turn.trims))
        if turn.replies:
            # One primary-key update each. A single UPDATE ... FROM (VALUES ...) would cost
            # the client less, but its plan depends on the table: without statistics
            # PostgreSQL joined 64 replies to a scan of every pending and dispatched row, and
            # once prepared it kept a plan made while the table was small (design-notes.md,
            # "Tried and not kept").
            completes.executemany(hot.complete_sql, [(reply, moment, v.key(request_id))
                                                     for request_id, reply in turn.replies])
        for service, room in turn.claims:
            sql, params = hot.claim_statement([service], room, turn.lease_until, turn.now,
                                              DELIVERY_COLUMNS)
            cursor = raw.cursor()
            cursor.execute(sql, params)
            claims.append(cursor)
        limits = raw.cursor()
        if turn.read_limits:
            limits.execute(LIMITED_SQL)
    if turn.read_limits:
        turn.limited.extend(row[0] for row in limits.fetchall())
    claimed, unopenable = hot.open_deliveries([row for cursor in claims
                                               for row in cursor.fetchall()])
    for request_id, error in unopenable:  # committed by now: each fails in its own statement
        raw.execute(hot.fail_sql, hot.fail_params(request_id, error, turn.now))
    return (sum(cursor.rowcount for cursor in inserts),
            (completes.rowcount if turn.replies else 0), claimed)


def get(raw: psycopg.Connection[Any], hot: HotStatements,
        request_id: str) -> StoredRequest | None:
    """One request by its checked id: one statement, one round trip (autocommit)."""
    row = raw.execute(hot.get_sql, (hot.values.key(request_id),)).fetchone()
    return None if row is None else record(tuple(row), hot.values, hot.bodies)


def all_stored(raw: psycopg.Connection[Any], hot: HotStatements,
               request_ids: Sequence[str]) -> bool:
    """Whether every one of these requests is stored (a retried commit whose first try did
    land: its inserts then fail as duplicates)."""
    keys = [hot.values.key(request_id) for request_id in request_ids]
    row = raw.execute(f"SELECT count(*) FROM {hot.table} WHERE id = ANY(%s)",
                      (keys,)).fetchone()
    return row is not None and row[0] == len(keys)


def stored_keys(raw: psycopg.Connection[Any], hot: HotStatements,
                keys: Sequence[str]) -> dict[str, str]:
    """The UUIDs stored under these idempotency keys."""
    rows = raw.execute(f"SELECT idempotency_key, id FROM {hot.table} "
                       "WHERE idempotency_key = ANY(%s)", (list(keys),)).fetchall()
    return {key: hot.values.read_key(row_id) for key, row_id in rows}


def is_duplicate(exc: BaseException) -> bool:
    """A unique key violated (a request id or idempotency key already stored)."""
    from psycopg import errors as pg_errors

    return isinstance(exc, pg_errors.UniqueViolation)


def is_retryable(exc: BaseException) -> bool:
    """A lost or refused connection (a server restart), or a serialization failure."""
    import psycopg

    return isinstance(exc, psycopg.OperationalError)
