"""The statements on the dispatcher's hot path, as driver SQL with values converted here.

Storing a request, claiming due ones, storing replies and reading one request run for every
request titanic carries. For these small statements SQLAlchemy's per-row work (bind and result
processors, cache keys, Row objects) costs several times what the database does, so each is one
SQL string per dialect, run with `Connection.exec_driver_sql` inside SqlStore's transactions
(errors are still translated there), and values are converted by the dialect's codec in
store.rows: the same representations SQLAlchemy's `Uuid` and `DateTime` types use, so both paths
read and write the same rows. Everything else stays on SQLAlchemy Core.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from titanic.errors import StoreError
from titanic.store.crypto import REQUEST, PlainBodies
from titanic.store.rows import COLUMNS, TABLE, Values, record, values_for
from titanic.store.types import Delivery, RequestStatus, StoredRequest

log = logging.getLogger("titanic.store")

#: The parts of streamed replies (store.models.reply_parts_table).
PARTS = "titanic_reply_parts"
PENDING = RequestStatus.PENDING.value
_CLAIM_TEXTS = 512  # claim statements kept, by shape and limit
DISPATCHED = RequestStatus.DISPATCHED.value
DONE = RequestStatus.DONE.value
#: A keyed request that another dispatcher stores at the same moment: the second insert waits
#: for the first to commit, then does nothing (the caller reads the winner's id). The conflict
#: target names the partial unique index by its column and predicate.
_SKIP_STORED_KEYS = (" ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL"
                     " DO NOTHING")
FAILED = RequestStatus.FAILED.value


class HotStatements:
    """The hot path's SQL for one dialect, and the row conversions around it."""

    def __init__(self, dialect_name: str, bodies: PlainBodies | None = None) -> None:
        self.bodies = bodies or PlainBodies()
        self.postgres = dialect_name == "postgresql"
        self.values: Values = values_for(dialect_name)
        self.table = TABLE
        p = self.values.placeholder
        columns = ", ".join(COLUMNS)
        marks = ", ".join([p] * len(COLUMNS))
        self.insert_sql = f"INSERT INTO {TABLE} ({columns}) VALUES ({marks})"
        self.insert_keyed_sql = self.insert_sql + _SKIP_STORED_KEYS
        self._columns = columns
        self._inserts: dict[tuple[int, bool], str] = {}
        self.get_sql = f"SELECT {columns} FROM {TABLE} WHERE id = {p}"
        # OR rather than IN keeps SQLite's planner on the primary key.
        self.complete_sql = (f"UPDATE {TABLE} SET reply = {p}, status = '{DONE}',"
                             f" completed_at = {p}, lease_until = NULL WHERE id = {p}"
                             f" AND (status = '{PENDING}' OR status = '{DISPATCHED}')")
        self._claims: dict[tuple[int | None, int, tuple[str, ...]], str] = {}
        self.fail_sql = (f"UPDATE {TABLE} SET status = '{FAILED}', completed_at = {p},"
                         f" lease_until = NULL, last_error = {p} WHERE id = {p}")
        # A part of a streamed reply, stored while its request is dispatched (a late part of
        # a request answered already changes nothing); a new attempt's part replaces the
        # earlier attempt's of the same number.
        self.part_sql = (f"INSERT INTO {PARTS} (request_id, seq, frames) SELECT {p}, {p}, {p}"
                         f" WHERE EXISTS (SELECT 1 FROM {TABLE} WHERE id = {p}"
                         f" AND status = '{DISPATCHED}') ON CONFLICT (request_id, seq)"
                         " DO UPDATE SET frames = excluded.frames")
        #: Parts past the last one of the attempt that answered (an earlier attempt's).
        self.trim_sql = f"DELETE FROM {PARTS} WHERE request_id = {p} AND seq > {p}"
        self.parts_sql = (f"SELECT seq, frames FROM {PARTS} WHERE request_id = {p} AND seq > {p}"
                          " ORDER BY seq")

    def orphan_parts_statement(self, request_id: str) -> tuple[str, tuple[Any, ...]]:
        """The DELETE of a closed request's parts."""
        return (f"DELETE FROM {PARTS} WHERE request_id = {self.values.placeholder}",
                (self.values.key(request_id),))

    def part_params(self, parts: Sequence[tuple[str, int, bytes]]) -> list[tuple[Any, ...]]:
        """part_sql's parameters for (request id, part number, packed frames)."""
        key = self.values.key
        return [(key(request_id), seq, frames, key(request_id))
                for request_id, seq, frames in parts]

    def trim_params(self, trims: Sequence[tuple[str, int]]) -> list[tuple[Any, ...]]:
        """trim_sql's parameters for (request id, its last part's number)."""
        key = self.values.key
        return [(key(request_id), last) for request_id, last in trims]

    def close_statement(self, request_id: str, owners: Sequence[str | None] | None
                        ) -> tuple[str, list[Any]]:
        """The DELETE of a request (titanic.close), with `owners` only if its owner is one of
        them (None standing for a request without owner)."""
        p = self.values.placeholder
        params: list[Any] = [self.values.key(request_id)]
        sql = f"DELETE FROM {TABLE} WHERE id = {p}"
        if owners is not None:
            keys = [owner for owner in owners if owner is not None]
            tests = [f"owner IN ({', '.join([p] * len(keys))})"] if keys else []
            if None in owners:
                tests.append("owner IS NULL")
            sql += f" AND ({' OR '.join(tests) or 'FALSE'})"
            params += keys
        return sql, params

    def insert_rows_sql(self, count: int, *, keyed: bool = False) -> str:
        """PostgreSQL: insert_sql (insert_keyed_sql with `keyed`) for `count` rows in one
        statement, with the server's own numbered placeholders ($1, $2, ...; for psycopg's
        RawCursor): their values one after another in the parameters. One statement costs
        the client less than `count` executions of the one-row statement, and a RawCursor
        does not parse it again each time (psycopg caches its parse of %s placeholders only
        for statements of 50 parameters or fewer)."""
        sql = self._inserts.get((count, keyed))
        if sql is None:
            width = len(COLUMNS)
            rows = ", ".join("(" + ", ".join(f"${row * width + column + 1}"
                                             for column in range(width)) + ")"
                             for row in range(count))
            sql = (f"INSERT INTO {TABLE} ({self._columns}) VALUES {rows}"
                   + (_SKIP_STORED_KEYS if keyed else ""))
            self._inserts[(count, keyed)] = sql
        return sql

    # -- statements ---------------------------------------------------------------------------

    def insert(self, conn: Connection, rows: Sequence[tuple[Any, ...]], *,
               keyed: bool = False) -> int:
        """Insert rows given in COLUMNS order (values already converted); `keyed` skips rows
        whose idempotency key is already stored. How many were inserted (-1: unknown)."""
        return conn.exec_driver_sql(self.insert_keyed_sql if keyed else self.insert_sql,
                                    list(rows)).rowcount

    def get(self, conn: Connection, request_id: str) -> StoredRequest | None:
        """One request by its checked id."""
        row = conn.exec_driver_sql(self.get_sql, (self.values.key(request_id),)).first()
        return None if row is None else record(tuple(row), self.values, self.bodies)

    def get_raw(self, raw: Any, request_id: str) -> StoredRequest | None:
        """One request by its checked id, on a DB-API connection outside a transaction."""
        row = raw.execute(self.get_sql, (self.values.key(request_id),)).fetchone()
        return None if row is None else record(tuple(row), self.values, self.bodies)

    def complete(self, conn: Connection, replies: Sequence[tuple[str, bytes]],
                 now: datetime) -> int:
        """Store packed replies of pending or dispatched requests; how many were stored."""
        v = self.values
        moment = v.time(now)
        params = [(reply, moment, v.key(request_id)) for request_id, reply in replies]
        sql = self.complete_sql
        if len(params) == 1 or not conn.dialect.supports_sane_multi_rowcount:
            return sum(conn.exec_driver_sql(sql, param).rowcount for param in params)
        return conn.exec_driver_sql(sql, params).rowcount

    def claim(self, conn: Connection, services: Sequence[str], limit: int,
              lease_until: datetime, now: datetime) -> list[StoredRequest]:
        """Lease up to `limit` due pending requests of these services, highest priority first,
        then oldest due."""
        sql, params = self.claim_statement(services, limit, lease_until, now, COLUMNS)
        rows = conn.exec_driver_sql(sql, params).all()
        values, bodies = self.values, self.bodies
        claimed = [record(tuple(row), values, bodies) for row in rows]
        claimed.sort(key=lambda r: (-r.priority, r.due_at, r.id))
        return claimed

    def open_deliveries(self, rows: Sequence[Any]
                        ) -> tuple[list[Delivery], list[tuple[str, str]]]:
        """Claimed rows (DELIVERY_COLUMNS) as Deliveries, highest priority first, then oldest,
        and the (id, error) of those whose body cannot be opened (no key, or a wrong or altered
        one): the caller fails them for good (fail_sql), so that they do not come back on every
        claim and hold up their service."""
        read_key = self.values.read_key
        unpack = self.bodies.unpack
        claimed, unopenable = [], []
        for row in rows:
            request_id = read_key(row[0])
            try:
                claimed.append(Delivery(request_id, row[1], unpack(request_id, REQUEST, row[2]),
                                        row[3], row[4]))
            except StoreError as exc:
                log.error("request %s failed: %s", request_id, exc)
                unopenable.append((request_id, str(exc)))
        # Sent in the order claimed: highest priority first, then time-ordered UUIDs (oldest).
        claimed.sort(key=lambda d: (-d.priority, d.id))
        return claimed, unopenable

    def fail_params(self, request_id: str, error: str, now: datetime) -> tuple[Any, ...]:
        """fail_sql's parameters: this request failed for good now, for this reason."""
        v = self.values
        return v.time(now), error, v.key(request_id)

    def claim_statement(self, services: Sequence[str], limit: int, lease_until: datetime,
                        now: datetime, returning: tuple[str, ...] = COLUMNS
                        ) -> tuple[str, tuple[Any, ...]]:
        """The claim's SQL for these services (one or more) and its parameters (also for
        looking at its plan)."""
        v = self.values
        lease, moment = v.time(lease_until), v.time(now)
        sql = self._claim_sql(len(services), limit, returning)
        if not self.postgres:
            if len(services) > 1:  # one probe per service
                probes = [value for service in services for value in (moment, service, limit)]
                return sql, (lease, *probes, limit)
            return sql, (lease, moment, services[0], limit)
        if len(services) == 1:
            return sql, (moment, services[0], lease)
        return sql, (list(services), moment, lease)

    def _claim_sql(self, services: int, limit: int, returning: tuple[str, ...]) -> str:
        """The claim for this many services (a claim of any service names the services with
        requests due: SqlStore.claim_due).

        PostgreSQL: the ids are locked in a materialized CTE with FOR UPDATE SKIP LOCKED, so they
        are chosen once and rows another claimer holds are skipped (an IN (subquery) may be
        evaluated again and pick more rows than its LIMIT). Each service is one `service = $n` probe
        of the (status, service, priority DESC, due_at) index, which yields its rows in claim order
        (highest priority, then oldest due; a due time later than now is skipped within the index):
        with `service = ANY($n)` PostgreSQL 15 cannot use the index's order and sorts every pending
        row of the backlog on each claim (20 ms against 0.1 ms with 50,000 waiting, on a table not
        yet analyzed). Several services are one such probe each (a LATERAL join over the list) whose
        few rows are merged. The UPDATE finds them by primary key alone (their row locks keep them
        pending; a second status test would offer the planner the status indexes, and it took one to
        read every pending row). The limit is in the text: a prepared statement's generic plan
        guesses a tenth of the table for `LIMIT $n` and would find the rows to update by reading the
        whole table.

        SQLite: the immediate transaction already holds the database's write lock, so the rows
        chosen are still pending when updated. (Repeating the status test in SQLite's UPDATE
        would make its planner pick a status index over the primary key and scan every pending
        row.)
        """
        key = (min(services, 2), limit, returning) if self.postgres else (services, 0, returning)
        sql = self._claims.get(key)
        if sql is not None:
            return sql
        set_clause = (f"SET status = '{DISPATCHED}', attempts = {TABLE}.attempts + 1,"
                      f" lease_until = {self.values.placeholder}")
        if self.postgres:
            columns = ", ".join(f"{TABLE}.{name}" for name in returning)
            sql = (f"WITH chosen AS MATERIALIZED ({_postgres_due(key[0], limit)}) "
                   f"UPDATE {TABLE} {set_clause} FROM chosen WHERE {TABLE}.id = chosen.id "
                   f"RETURNING {columns}")
        else:
            sql = (f"UPDATE {TABLE} {set_clause} WHERE id IN ({_sqlite_due(services)}) "
                   f"RETURNING {', '.join(returning)}")
        if len(self._claims) >= _CLAIM_TEXTS:
            self._claims.clear()  # unusual limits only: the dispatcher's stay few
        self._claims[key] = sql
        return sql


#: The order a claim takes a service's due requests in: the service index's order (status,
#: service, priority DESC, due_at), so that they are read from it without a sort.
_CLAIM_ORDER = "priority DESC, due_at"


def _postgres_due(services: int, limit: int) -> str:
    """PostgreSQL: the ids of due pending requests to claim, locked (see _claim_sql)."""
    due = (f"SELECT id, priority, due_at FROM {TABLE} WHERE status = '{PENDING}'"
           f" AND due_at <= %s")
    lock = f"ORDER BY {_CLAIM_ORDER} LIMIT {int(limit):d} FOR UPDATE SKIP LOCKED"
    if services == 1:
        return f"{due} AND service = %s {lock}"
    due = due.replace(f"FROM {TABLE} WHERE", f"FROM {TABLE} WHERE service = listed.name AND")
    return (f"SELECT probe.id FROM unnest(%s::text[]) AS listed(name) CROSS JOIN LATERAL "
            f"({due} {lock}) AS probe ORDER BY probe.priority DESC, probe.due_at"
            f" LIMIT {int(limit):d}")


def _sqlite_due(services: int) -> str:
    """SQLite: the ids of due pending requests to claim (the write lock is already held).

    Several services are one probe of the (status, service, priority DESC, due_at) index each,
    merged, so that no service's backlog is read for another's claim. One SELECT of a UNION
    takes at most 500 terms in SQLite: SqlStore.claim_due names at most 200 services at once.
    """
    if services < 2:
        return (f"SELECT id FROM {TABLE} WHERE status = '{PENDING}' AND due_at <= ?"
                f" AND service IN (?) ORDER BY {_CLAIM_ORDER} LIMIT ?")
    due = (f"SELECT id, priority, due_at FROM {TABLE} WHERE status = '{PENDING}'"
           f" AND due_at <= ?")
    probe = (f"SELECT id, priority, due_at FROM ({due} AND service = ?"
             f" ORDER BY {_CLAIM_ORDER} LIMIT ?)")
    merged = " UNION ALL ".join([probe] * services)
    return f"SELECT id FROM ({merged}) ORDER BY {_CLAIM_ORDER} LIMIT ?"
