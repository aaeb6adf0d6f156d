"""SqlStore: the request store on SQLite or PostgreSQL, one short transaction per method.

Database errors are translated to StoreError in one place, `_transaction`, which also retries
what is safe to retry: SQLite's "database is locked" and PostgreSQL connections dropped by a
server restart.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Update,
    and_,
    case,
    delete,
    func,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from titanic.errors import StoreError
from titanic.settings import MAX_REQUEST_BYTES
from titanic.store import dialect, pipeline, sqlite_turn
from titanic.store.crypto import REPLY, REQUEST, PlainBodies
from titanic.store.hot import HotStatements
from titanic.store.limits import SqlLimits
from titanic.store.models import forwards_table as f
from titanic.store.models import identity_table, limits_table, reply_parts_table
from titanic.store.models import requests_table as t
from titanic.store.overview import SqlOverview, delete_orphan_parts
from titanic.store.reseal import reseal_bodies

if TYPE_CHECKING:  # imported by SQLAlchemy for a PostgreSQL engine; never for SQLite
    import psycopg
from titanic.store.rows import (
    CoreValues,
    aware_utc,
    naive_utc,
    new_row,
    record,
    request_key,
    utcnow,
)
from titanic.store.types import (
    FINISHED,
    SCHEDULED,
    Delivery,
    Exchange,
    NewRequest,
    RequestStatus,
    StoredRequest,
    StoreIdentity,
    StoreStats,
    backoff_delay,
    check_new_request,
    check_request_id,
    failed_after,
    fresh_claims,
    new_request_id,
)

log = logging.getLogger("titanic.store")


class TurnDriver(Protocol):
    """A dispatcher turn's statements on one driver's own connection: the modules
    store.sqlite_turn (sqlite3) and store.pipeline (psycopg) both provide these."""

    def run_turn(self, raw: Any, hot: HotStatements,
                 turn: pipeline.Turn) -> tuple[int, int, list[Delivery]]: ...

    def is_duplicate(self, exc: BaseException) -> bool: ...

    def all_stored(self, raw: Any, hot: HotStatements, request_ids: Sequence[str]) -> bool: ...

    def stored_keys(self, raw: Any, hot: HotStatements,
                    keys: Sequence[str]) -> dict[str, str]: ...


T = TypeVar("T")
C = TypeVar("C")

RETRIES = 8
RETRY_DELAY_S = 0.1
RETRY_DELAY_MAX_S = 2.0
#: How long close_store waits for other threads' transactions to end.
CLOSE_WAIT_S = 10.0

PENDING = RequestStatus.PENDING.value
DISPATCHED = RequestStatus.DISPATCHED.value
_FINISHED = [status.value for status in FINISHED]
_SQLITE_NORMAL = 1  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
#: Requests expired per write transaction (Store.expire).
_EXPIRE_BATCH = 500
#: Services probed at most by one claim of any service (SQLite allows 500 terms in a UNION).
_ANY_SERVICE_PROBES = 200


def _column(conn: Connection, statement: Select[Any]) -> list[Any]:
    """The first column of every row."""
    return list(conn.execute(statement).scalars())


def _rowcount(conn: Connection, statement: Update) -> int:
    """How many rows an UPDATE changed."""
    return conn.execute(statement).rowcount


def due_services_statement(moment: datetime | None, *, ordered: bool = False) -> Select[Any]:
    """Each service with pending requests and its earliest due time (naive UTC), those due at
    `moment` only (None: all), earliest first if `ordered`, by a skip scan of the (status,
    service, priority DESC, due_at) index: one step for each (service, priority) with pending
    requests, each a few probes of the index, and one probe for the earliest due time of each,
    so the cost grows with the number of services and of the priorities in use, not of waiting
    requests (50,000 waiting for one service and 10 for each of five others, all of one
    priority: 2.5 ms on PostgreSQL and 1.3 ms on SQLite, where counting them by service took
    39 and 12 ms)."""
    pending = t.c.status == PENDING

    def top(service: Any) -> Any:  # the highest priority pending in `service`
        return (select(t.c.priority).where(pending, t.c.service == service)
                .order_by(t.c.priority.desc()).limit(1).scalar_subquery())

    first = select(t.c.service).where(pending).order_by(t.c.service).limit(1).scalar_subquery()
    found = select(first.label("service"), top(first).label("priority")).cte(
        "found", recursive=True)
    previous = found.alias("previous")
    lower = (select(t.c.priority).where(pending, t.c.service == previous.c.service,
                                        t.c.priority < previous.c.priority)
             .order_by(t.c.priority.desc()).limit(1).correlate_except(t).scalar_subquery())
    # correlate_except: nested in top() too, where it would not be correlated on its own.
    following = (select(t.c.service).where(pending, t.c.service > previous.c.service)
                 .order_by(t.c.service).limit(1).correlate_except(t).scalar_subquery())
    # The next priority of the same service, else the next service and its highest priority.
    step = select(case((lower.is_not(None), previous.c.service), else_=following),
                  case((lower.is_not(None), lower), else_=top(following)))
    found = found.union_all(step.where(previous.c.service.is_not(None)))
    # A scalar subquery, not EXISTS: PostgreSQL turns that into a join with every due row.
    earliest = (select(t.c.due_at).where(pending, t.c.service == found.c.service,
                                         t.c.priority == found.c.priority)
                .order_by(t.c.due_at).limit(1).scalar_subquery())
    pairs = (select(found.c.service, earliest.label("earliest"))
             .where(found.c.service.is_not(None)).subquery("pairs"))
    services = (select(pairs.c.service, func.min(pairs.c.earliest).label("earliest"))
                .group_by(pairs.c.service).subquery("services"))
    statement = select(services.c.service, services.c.earliest)
    if moment is not None:
        statement = statement.where(services.c.earliest <= moment)
    return statement.order_by(services.c.earliest, services.c.service) if ordered else statement


class SqlStore(SqlOverview, SqlLimits):
    """The request store on a SQLAlchemy engine (see titanic.store.open_store); `bodies` seals
    request and reply bodies at rest (titanic.store.crypto), plain without."""

    def __init__(self, engine: Engine, *, max_request_bytes: int = MAX_REQUEST_BYTES,
                 bodies: PlainBodies | None = None) -> None:
        self.engine = engine
        self.bodies = bodies or PlainBodies()
        self.max_request_bytes = max_request_bytes
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = threading.Lock()
        # Each thread keeps its connections: a pool checkout, its reset and (PostgreSQL) its
        # pre-ping cost more than a small transaction. Kept here too, to close them all.
        self._local = threading.local()
        self._opened: list[Connection | PoolProxiedConnection] = []
        self._opened_lock = threading.Lock()
        # Transactions under way, so that close_store waits for them instead of closing a
        # connection under another thread's feet (SQLite's driver crashes the process then).
        self._activity = threading.Condition()
        self._active = 0
        self._closed = False
        self._hot = HotStatements(engine.dialect.name, self.bodies)

    # -- the one boundary where database errors become StoreError ------------------------------

    def _thread_connection(self, durable: bool | None = None) -> Connection:
        """This thread's connection. On SQLite `durable` sets how its next commits end: True
        with the engine's synchronous level (an fsync with FULL), False without an fsync
        (NORMAL), None as they are (a read); a PRAGMA is sent only when that changes.

        One connection for both kinds of commit, not a second for those without an fsync:
        SQLite empties a connection's page cache whenever another connection has written, so
        two connections taking turns would read every page of each turn again (13% more CPU
        for an fsync'd insert followed by a reply, measured on a loop of such pairs)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.engine.connect()
            self._local.conn = conn
            if self._is_sqlite:
                row = self._raw_sqlite(conn).execute("PRAGMA synchronous").fetchone()
                self._local.durable_level = self._local.level = int(row[0])
            self._keep(conn)
        if self._is_sqlite and durable is not None:
            wanted = self._local.durable_level if durable else min(_SQLITE_NORMAL,
                                                                    self._local.durable_level)
            if wanted != self._local.level:
                self._raw_sqlite(conn).execute(f"PRAGMA synchronous={wanted:d}")
                self._local.level = wanted
        return conn

    @staticmethod
    def _raw_sqlite(conn: Connection) -> sqlite3.Connection:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        return raw

    @contextmanager
    def _pipelined_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """PostgreSQL: this thread's psycopg connection for pipelined turns, in autocommit mode
        (a pipeline up to its Sync is one implicit transaction)."""
        proxied: PoolProxiedConnection | None = getattr(self._local, "pipelined", None)
        if proxied is None:
            proxied = self.engine.raw_connection()
            proxied.driver_connection.autocommit = True  # type: ignore[union-attr]
            self._local.pipelined = proxied
            self._keep(proxied)
        yield proxied.driver_connection  # type: ignore[misc]

    def _keep(self, conn: Connection | PoolProxiedConnection) -> None:
        """Remember a new connection (to close it with the store); forget closed ones."""
        with self._opened_lock:
            self._opened = [c for c in self._opened if not _is_closed(c)]
            self._opened.append(conn)

    def _forget_thread_connections(self) -> None:
        """After an error: this thread starts again on fresh connections."""
        for name in ("conn", "pipelined"):
            conn: Connection | PoolProxiedConnection | None = getattr(self._local, name, None)
            if conn is not None:
                setattr(self._local, name, None)
                try:
                    conn.invalidate()
                    conn.close()
                except (SQLAlchemyError, _psycopg_error()):
                    pass

    @contextmanager
    def _connect(self, *, write: bool, durable: bool) -> Iterator[Connection]:
        if not self._is_sqlite:
            conn = self._thread_connection(durable=True)
            with conn.begin():
                yield conn
            return
        # SQLite: writers of this process queue on a lock, which wakes the next one at once;
        # SQLite's own busy handler (left for other processes) sleeps in steps of milliseconds.
        with self._write_lock if write else nullcontext():
            conn = self._thread_connection(durable if write else None)
            conn.execution_options(**{dialect.SQLITE_WRITE_OPTION: write})
            with conn.begin():
                yield conn

    def _transaction(self, work: Callable[[Connection], T], *, write: bool = True,
                     durable: bool = True) -> T:
        """Run `work` in one transaction, retrying lock contention and dropped connections.

        `durable=False` is for writes whose loss in a power cut is harmless because a lease
        recovers from it (claims, releases, retry schedules, stored replies): on SQLite their
        commit skips the fsync, and the next durable commit makes them durable too.
        """
        return self._retrying(lambda: self._connect(write=write, durable=durable), work)

    def _pipelined(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """PostgreSQL: run `work` on this thread's pipelined connection (see store.pipeline),
        with the same retries and error translation as a transaction."""
        return self._retrying(self._pipelined_connection, work)

    def _retrying(self, connect: Callable[[], AbstractContextManager[C]],
                  work: Callable[[C], T]) -> T:
        delay = RETRY_DELAY_S
        for attempt in range(RETRIES + 1):
            try:
                with self._in_use(), connect() as conn:
                    return work(conn)
            except (DBAPIError, _psycopg_error(), sqlite3.Error) as exc:
                self._forget_thread_connections()
                if attempt == RETRIES or not self._retryable(exc):
                    raise StoreError(f"database error: {_first_line(exc)}") from exc
                log.warning("database busy or connection lost (%s); retrying in %.1f s",
                            _first_line(exc), delay)
            except SQLAlchemyError as exc:
                self._forget_thread_connections()
                raise StoreError(f"database error: {_first_line(exc)}") from exc
            time.sleep(delay)
            delay = min(RETRY_DELAY_MAX_S, delay * 2)
        raise AssertionError("unreachable")

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        with self._activity:
            if self._closed:
                raise StoreError("the store is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._activity:
                self._active -= 1
                if self._closed and not self._active:
                    self._activity.notify_all()

    def _retryable(self, exc: Exception) -> bool:
        """Lock contention, and (PostgreSQL) a lost or refused connection: a server restart.
        `exc` is SQLAlchemy's DBAPIError, or the driver's own (sqlite3, psycopg) error."""
        if isinstance(exc, sqlite3.Error):
            return sqlite_turn.is_retryable(exc)
        if not isinstance(exc, DBAPIError):
            return pipeline.is_retryable(exc)
        if exc.connection_invalidated:
            return True
        if not self._is_sqlite and isinstance(exc, OperationalError):
            return True
        text = str(exc.orig).lower()
        return "database is locked" in text or "could not serialize" in text

    # -- writing requests -----------------------------------------------------------------------

    def submit(self, service: str, frames: Sequence[bytes], *, deadline: datetime | None = None,
               idempotency_key: str | None = None) -> str:
        """Store one request, committed before returning its UUID."""
        return self.submit_many([NewRequest(service, tuple(frames), deadline,
                                            idempotency_key)])[0]

    def submit_many(self, requests: Sequence[NewRequest]) -> list[str]:
        """Store a batch in one transaction (group commit); UUIDs in input order."""
        return self.exchange(requests, [], {}, 0.0).ids

    def _new_rows(self, requests: Sequence[NewRequest], now: datetime,
                  leased: Sequence[datetime | None] = ()
                  ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Check the requests; their new UUIDs and their rows (COLUMNS order, converted), stored
        at `now` (naive UTC), each claimed where `leased` gives it a lease."""
        for request in requests:
            check_new_request(request, self.max_request_bytes)
        ids = [new_request_id() for _ in requests]
        values, pack = self._hot.values, self.bodies.pack
        leases = leased or [None] * len(requests)
        rows = [new_row(values, request_id, r.service, pack(request_id, REQUEST, r.frames), now,
                        naive_utc(r.deadline), r.idempotency_key, r.owner, lease_until,
                        naive_utc(r.not_before), r.priority)
                for request_id, r, lease_until in zip(ids, requests, leases, strict=True)]
        return ids, rows

    def exchange(self, new: Sequence[NewRequest],
                 replies: Sequence[tuple[str, Sequence[bytes]]], claims: Mapping[str, int],
                 lease: float, *, now: datetime | None = None,
                 claim_new: Mapping[str, int] | None = None,
                 parts: Sequence[tuple[str, int, Sequence[bytes]]] = (),
                 trims: Sequence[tuple[str, int]] = ()) -> Exchange:
        """In one transaction: store new requests, parts of streamed replies and replies, then
        claim per service; the new requests `claim_new` names are stored claimed (see
        Store.exchange).

        The dispatcher's turn: one commit instead of three, and durable (an fsync on SQLite,
        a synchronous commit on PostgreSQL) only when it stores new requests; the replies and
        leases ride along. On PostgreSQL one round trip (store.pipeline), and a second only
        when a new request's idempotency key was stored already (to read its UUID).
        """
        stamp = utcnow()  # the new requests' time: due at `moment` (unless `now` is earlier)
        moment = naive_utc(now) or stamp
        lease_until = moment + timedelta(seconds=lease)
        limited = self.known_limited() if claims or claim_new else frozenset()
        if limited:  # claimed apart, within their limits (store.limits), never stored claimed
            claims = {**claims, **{service: room for service, room in (claim_new or {}).items()
                                   if service in limited}}
            claim_new = {service: room for service, room in (claim_new or {}).items()
                         if service not in limited}
            held = [(service, room) for service, room in claims.items()
                    if service in limited and room > 0]
            claims = {service: room for service, room in claims.items() if service not in limited}
            result = self._exchange(new, replies, claims, moment, lease_until, stamp, claim_new,
                                    parts, trims)
            return self._add_limited(result, held, lease_until, moment)
        return self._exchange(new, replies, claims, moment, lease_until, stamp, claim_new,
                              parts, trims)

    def _add_limited(self, result: Exchange, held: Sequence[tuple[str, int]],
                     lease_until: datetime, moment: datetime) -> Exchange:
        """The exchange with the claims of limited services added, each in its own
        transaction (see store.limits)."""
        claimed, waits = list(result.claimed), dict(result.waits)
        for service, room in held:
            deliveries, wait = self.claim_limited(service, room, lease_until, moment)
            claimed += deliveries
            if wait is not None:
                waits[service] = wait
        return Exchange(result.ids, result.completed, claimed, waits)

    def _exchange(self, new: Sequence[NewRequest],
                  replies: Sequence[tuple[str, Sequence[bytes]]], claims: Mapping[str, int],
                  moment: datetime, lease_until: datetime, stamp: datetime,
                  claim_new: Mapping[str, int] | None,
                  parts: Sequence[tuple[str, int, Sequence[bytes]]],
                  trims: Sequence[tuple[str, int]]) -> Exchange:
        """exchange() for services without limits."""
        fresh = fresh_claims(new, claim_new)
        leased = [lease_until if take else None for take in fresh] if any(fresh) else []
        ids, rows = self._new_rows(new, stamp, leased) if new else ([], [])
        packed = self._pack_replies(replies)
        packed_parts = [(request_id, seq, frames) for (request_id, frames), (_, seq, _)
                        in zip(self._pack_replies([(i, f) for i, _, f in parts]), parts,
                               strict=True)]
        checked_trims = [(check_request_id(request_id), last) for request_id, last in trims]
        wanted = [(service, room) for service, room in claims.items() if room > 0]
        if not rows and not packed and not wanted and not packed_parts and not checked_trims:
            return Exchange([], 0, [])
        batch = NewBatch.of(new, ids, rows)
        # The limited services are read within a turn that claims, when due again: the next
        # turn splits its claims by them (this one by what was read before).
        read_limits = bool(wanted) and self.limits_stale()
        turn = pipeline.Turn(batch.rows, packed, wanted, moment, lease_until, keyed=batch.keyed,
                             parts=packed_parts, trims=checked_trims, read_limits=read_limits)
        if self._hot.postgres:
            result = self._pipelined(lambda raw: self._run_driver_turn(pipeline, raw, batch, turn))
        else:
            result = self._retrying(
                lambda: self._sqlite_turn_connection(durable=bool(batch.rows)),
                lambda raw: self._run_driver_turn(sqlite_turn, raw, batch, turn))
        if read_limits:
            self.note_limited(turn.limited)
        if not leased:
            return result
        claimed = [Delivery(request_id, r.service, tuple(r.frames), 1)
                   for request_id, r, take in zip(ids, new, fresh, strict=True) if take]
        return Exchange(result.ids, result.completed, claimed + result.claimed)

    @contextmanager
    def _sqlite_turn_connection(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        """SQLite: this thread's driver connection in an immediate transaction (store.sqlite_turn),
        behind the same lock as every write of this process."""
        with self._write_lock:
            raw = self._raw_sqlite(self._thread_connection(durable))
            with sqlite_turn.immediate(raw):
                yield raw

    def _run_driver_turn(self, driver: TurnDriver, raw: Any, batch: NewBatch,
                         turn: pipeline.Turn) -> Exchange:
        """A turn through `driver` (store.sqlite_turn or store.pipeline) on its open connection."""
        try:
            inserted, completed, claimed = driver.run_turn(raw, self._hot, turn)
        except Exception as exc:
            # A retried turn whose first try did land: its requests are stored; the rest again.
            if not (turn.rows and driver.is_duplicate(exc)
                    and driver.all_stored(raw, self._hot, batch.row_ids)):
                raise
            inserted, completed, claimed = driver.run_turn(raw, self._hot,
                                                           replace(turn, rows=()))
            inserted = len(batch.rows)
        # A key stored already (a resent submit) was skipped: one more statement for its id.
        found = (driver.stored_keys(raw, self._hot, batch.keys)
                 if batch.keyed and inserted != len(batch.rows) else {})
        return Exchange(batch.answer(found), completed, claimed)

    def _pack_replies(self, replies: Sequence[tuple[str, Sequence[bytes]]]
                      ) -> list[tuple[str, bytes]]:
        """Replies as stored: (checked UUID, packed and, with a store key, sealed body)."""
        pack = self.bodies.pack
        packed = []
        for request_id, reply in replies:
            checked = check_request_id(request_id)
            packed.append((checked, pack(checked, REPLY, reply)))
        return packed

    def complete(self, request_id: str, reply: Sequence[bytes]) -> bool:
        """Store the reply: done. False if the request is unknown or already finished."""
        return self.complete_many([(request_id, reply)]) == 1

    def complete_many(self, replies: Sequence[tuple[str, Sequence[bytes]]]) -> int:
        """complete() for a batch in one transaction; returns how many were stored.

        No fsync: a reply lost in a power cut leaves its request dispatched, and the lease
        sends it again (at least once); the next durable commit makes this one durable too.
        """
        return self.exchange([], replies, {}, 0.0).completed

    def retry_later(self, request_id: str, error: str, *, max_attempts: int, backoff: float,
                    backoff_max: float, now: datetime | None = None) -> RequestStatus | None:
        """After a failed attempt: pending again after a backoff, or failed for good.

        Returns the request's status afterwards, or None if it no longer exists.
        """
        key = request_key(request_id)
        moment = naive_utc(now) or utcnow()

        def work(conn: Connection) -> RequestStatus | None:
            row = conn.execute(dialect.lock_row(select(t.c.status, t.c.attempts)
                                                .where(t.c.id == key), conn)).first()
            if row is None:
                return None  # closed meanwhile
            if row.status != DISPATCHED:
                return RequestStatus(row.status)
            if row.attempts >= max_attempts:
                conn.execute(update(t).where(t.c.id == key).values(
                    status=RequestStatus.FAILED.value, completed_at=moment, lease_until=None,
                    last_error=failed_after(error, row.attempts)))
                return RequestStatus.FAILED
            due = moment + timedelta(seconds=backoff_delay(row.attempts, backoff, backoff_max))
            conn.execute(update(t).where(t.c.id == key).values(
                status=PENDING, due_at=due, lease_until=None, last_error=error))
            return RequestStatus.PENDING

        return self._transaction(work, durable=False)

    def release(self, request_id: str) -> bool:
        """Hand a dispatched request back to pending now, the attempt not counted."""
        key = request_key(request_id)
        statement = (update(t).where(t.c.id == key, t.c.status == DISPATCHED)
                     .values(status=PENDING, due_at=utcnow(), lease_until=None,
                             attempts=t.c.attempts - 1))
        return self._transaction(lambda conn: conn.execute(statement).rowcount == 1,
                                 durable=False)

    def fail(self, request_id: str, error: str) -> bool:
        """Mark a pending or dispatched request failed for good."""
        statement = (update(t).where(t.c.id == request_key(request_id),
                                     t.c.status.in_([PENDING, DISPATCHED]))
                     .values(status=RequestStatus.FAILED.value, completed_at=utcnow(),
                             lease_until=None, last_error=error))
        return self._transaction(lambda conn: conn.execute(statement).rowcount == 1)

    def requeue(self, request_id: str) -> bool:
        """A failed or expired request becomes pending again, attempts reset."""
        statement = (update(t).where(t.c.id == request_key(request_id),
                                     t.c.status.in_([RequestStatus.FAILED.value,
                                                     RequestStatus.EXPIRED.value]))
                     .values(status=PENDING, due_at=utcnow(), attempts=0, completed_at=None,
                             lease_until=None))
        return self._transaction(lambda conn: conn.execute(statement).rowcount == 1)

    def close(self, request_id: str, *, owners: Sequence[str | None] | None = None) -> None:
        """Delete the request and its reply; an unknown UUID is fine. With `owners`, only if its
        owner is one of them (None standing for a request without owner)."""
        checked = check_request_id(request_id)
        if not self._hot.postgres:
            # On the driver's connection (SQLAlchemy's transaction costs more than the DELETE),
            # and not durable on its own (no fsync): a close lost in a power cut leaves the
            # request as it was, to be closed again; the next durable commit covers it.
            sql, params = self._hot.close_statement(checked, owners)
            parts_sql, parts_params = self._hot.orphan_parts_statement(checked)

            def close_on(raw: sqlite3.Connection) -> None:
                if raw.execute(sql, params).rowcount:
                    raw.execute(parts_sql, parts_params)

            self._retrying(lambda: self._sqlite_turn_connection(durable=False), close_on)
            return
        statement = delete(t).where(t.c.id == request_key(checked))
        if owners is not None:
            keys = [owner for owner in owners if owner is not None]
            statement = statement.where(or_(t.c.owner.in_(keys), t.c.owner.is_(None))
                                        if None in owners else t.c.owner.in_(keys))
        parts = delete(reply_parts_table).where(reply_parts_table.c.request_id
                                                == request_key(checked))

        def close_in(conn: Connection) -> None:
            if conn.execute(statement).rowcount:
                conn.execute(parts)

        self._transaction(close_in)

    def close_many(self, request_ids: Sequence[str]) -> None:
        """close() for a batch, whoever owns them, in one transaction (not durable on its own,
        as close())."""
        keys = [check_request_id(request_id) for request_id in request_ids]
        if not keys:
            return
        if not self._hot.postgres:
            sql, _ = self._hot.close_statement(keys[0], None)
            params = [self._hot.close_statement(key, None)[1] for key in keys]
            parts_sql = (f"DELETE FROM {reply_parts_table.name} WHERE request_id = "
                         f"{self._hot.values.placeholder}")

            def close_in_turn(raw: Any) -> None:
                if raw.executemany(sql, params).rowcount:  # and the parts of streamed replies
                    raw.executemany(parts_sql, [param[:1] for param in params])

            self._retrying(lambda: self._sqlite_turn_connection(durable=False), close_in_turn)
            return
        ids = [request_key(key) for key in keys]
        parts = delete(reply_parts_table).where(reply_parts_table.c.request_id.in_(ids))

        def close_in(conn: Connection) -> None:
            if conn.execute(delete(t).where(t.c.id.in_(ids))).rowcount:
                conn.execute(parts)

        self._transaction(close_in, durable=False)

    # -- requests sent to other sites ----------------------------------------------------------

    def record_forwards(self, forwards: Sequence[tuple[str, str, str]]) -> None:
        """Remember requests sent to another site (not durable on its own: a lost row only
        makes a restarted link wait for the request's lease)."""
        if not forwards:
            return
        if not self._hot.postgres:  # on the driver connection: one statement a row
            key = self._hot.values.key
            params = [(key(check_request_id(request_id)), peer, key(check_request_id(far_id)))
                      for request_id, peer, far_id in forwards]
            sql = f"INSERT OR REPLACE INTO {f.name} (id, peer, far_id) VALUES (?, ?, ?)"
            self._retrying(lambda: self._sqlite_turn_connection(durable=False),
                           lambda raw: raw.executemany(sql, params))
            return
        rows = [{"id": request_key(request_id), "peer": peer, "far_id": request_key(far_id)}
                for request_id, peer, far_id in forwards]

        def record(conn: Connection) -> None:
            conn.execute(delete(f).where(f.c.id.in_([row["id"] for row in rows])))
            conn.execute(f.insert(), rows)

        self._transaction(record, durable=False)

    def forwards_of(self, peer: str) -> list[tuple[str, str]]:
        """The requests sent to `peer` and still dispatched; forgets the others' forwards."""
        def read(conn: Connection) -> list[tuple[str, str]]:
            conn.execute(delete(f).where(f.c.id.not_in(
                select(t.c.id).where(t.c.status == DISPATCHED))))
            found = conn.execute(select(f.c.id, f.c.far_id).where(f.c.peer == peer)).all()
            return [(request_id.hex, far_id.hex) for request_id, far_id in found]

        return self._transaction(read, durable=False)

    def forget_forwards(self, request_ids: Sequence[str]) -> None:
        """Forget these requests' forwards."""
        keys = [request_key(request_id) for request_id in request_ids]
        if keys:
            self._transaction(lambda conn: conn.execute(delete(f).where(f.c.id.in_(keys))),
                              durable=False)

    def cancel(self, request_id: str, *, owners: Sequence[str | None] | None = None
               ) -> str | None:
        """Cancel a pending or dispatched request (see Store.cancel); the state it was in."""
        key = request_key(request_id)
        moment = utcnow()

        def work(conn: Connection) -> str | None:
            row = conn.execute(dialect.lock_row(
                select(t.c.status, t.c.owner, t.c.attempts, t.c.due_at).where(t.c.id == key),
                conn)).first()
            if row is None or (owners is not None and row.owner not in owners):
                return None
            if row.status not in (PENDING, DISPATCHED):
                return str(row.status)
            conn.execute(update(t).where(t.c.id == key).values(
                status=RequestStatus.CANCELLED.value, completed_at=moment, lease_until=None,
                last_error="cancelled"))
            waiting = row.status == PENDING and row.attempts == 0 and row.due_at > moment
            return SCHEDULED if waiting else str(row.status)

        return self._transaction(work)

    # -- dispatching ----------------------------------------------------------------------------

    def claim_due(self, services: Sequence[str] | None, limit: int, lease: float, *,
                  now: datetime | None = None) -> list[StoredRequest]:
        """Lease up to `limit` due pending requests (highest priority, then oldest due, first;
        a limited service's within its limits): they become dispatched."""
        if limit <= 0 or (services is not None and not services):
            return []
        moment = naive_utc(now) or utcnow()
        lease_until = moment + timedelta(seconds=lease)

        limited = self.known_limited()

        def claim(conn: Connection) -> tuple[list[StoredRequest], list[str]]:
            # Any service: the services with requests due, each probed (no index orders the
            # due requests of every service). The `limit` services due earliest hold the
            # `limit` requests due earliest; at most _ANY_SERVICE_PROBES of them at once.
            names = services
            if names is None:
                due = conn.execute(due_services_statement(moment, ordered=True).limit(
                    min(limit, _ANY_SERVICE_PROBES))).scalars().all()
                if not due:
                    return [], []
                names = list(due)
            free = [name for name in names if name not in limited]
            held = [name for name in names if name in limited]
            return (self._hot.claim(conn, free, limit, lease_until, moment) if free else []), held

        found, held = self._transaction(claim, durable=False)
        for service in held:  # within their limits, each in a transaction of its own
            if len(found) < limit:
                found += self.claim_limited_records(service, limit - len(found), lease_until,
                                                    moment)
        return found

    def release_stale(self, *, now: datetime | None = None) -> int:
        """Dispatched requests whose lease ran out become pending (crash recovery)."""
        moment = naive_utc(now) or utcnow()
        statement = (update(t).where(t.c.status == DISPATCHED, t.c.lease_until < moment)
                     .values(status=PENDING, due_at=moment, lease_until=None))
        return self._transaction(lambda conn: conn.execute(statement).rowcount, durable=False)

    def expire(self, *, pending_ttl: float, now: datetime | None = None) -> int:
        """Pending requests older than pending_ttl seconds (since submitted, and since due: a
        scheduled request counts from its time) or past their deadline: expired."""
        moment = naive_utc(now) or utcnow()
        too_old = moment - timedelta(seconds=pending_ttl)
        reasons = ((and_(t.c.created_at < too_old, t.c.due_at < too_old),
                    f"not delivered within {pending_ttl:g} s"),
                   (t.c.deadline < moment, "not delivered before its deadline"))
        expired = 0
        for condition, why in reasons:
            # Found by a read, which holds no lock while it goes through every waiting request
            # (no index leads with their age or deadline): SQLite's write lock, and on
            # PostgreSQL the rows' locks, are taken only to expire what it found, a batch at
            # a time, checked again.
            found = select(t.c.id).where(t.c.status == PENDING, condition)
            keys = self._transaction(partial(_column, statement=found), write=False)
            for start in range(0, len(keys), _EXPIRE_BATCH):
                batch = keys[start:start + _EXPIRE_BATCH]
                statement = (update(t).where(t.c.id.in_(batch), t.c.status == PENDING, condition)
                             .values(status=RequestStatus.EXPIRED.value, completed_at=moment,
                                     last_error=why))
                expired += self._transaction(partial(_rowcount, statement=statement))
        return expired

    def purge(self, *, reply_ttl: float, now: datetime | None = None) -> int:
        """Delete finished requests that finished more than reply_ttl seconds ago."""
        cutoff = (naive_utc(now) or utcnow()) - timedelta(seconds=reply_ttl)
        statement = delete(t).where(t.c.status.in_(_FINISHED), t.c.completed_at < cutoff)
        return self._transaction(lambda conn: delete_orphan_parts(conn,
                                                                  conn.execute(statement).rowcount))

    def parts_after(self, request_id: str, after: int) -> list[tuple[int, tuple[bytes, ...]]]:
        """The stored parts of a streamed reply numbered after `after`, in order."""
        checked = check_request_id(request_id)
        hot = self._hot
        params = (hot.values.key(checked), after)

        def read(conn: Connection) -> list[tuple[int, tuple[bytes, ...]]]:
            rows = conn.exec_driver_sql(hot.parts_sql, params).all()
            return [(int(seq), self.bodies.unpack(checked, REPLY, bytes(frames)))
                    for seq, frames in rows]

        return self._transaction(read, write=False)

    # -- reading --------------------------------------------------------------------------------

    def get(self, request_id: str) -> StoredRequest | None:
        """The request, or None if unknown."""
        checked = check_request_id(request_id)
        if self._hot.postgres:
            return self._pipelined(lambda raw: pipeline.get(raw, self._hot, checked))
        # One SELECT on the driver's connection, a transaction of its own: SQLAlchemy's
        # transaction around it cost ten times the read (titanic.reply, titanic.wait).
        return self._retrying(lambda: nullcontext(self._raw_sqlite(self._thread_connection())),
                              lambda raw: self._hot.get_raw(raw, checked))

    def next_due_at(self, services: Sequence[str] | None = None) -> datetime | None:
        """When the earliest pending request is due."""
        if services is None:  # the earliest of each service's earliest (the survey's scan)
            scan = due_services_statement(None).subquery()
            statement = select(func.min(scan.c.earliest))
        else:
            statement = select(func.min(t.c.due_at)).where(t.c.status == PENDING,
                                                           t.c.service.in_(list(services)))
        return aware_utc(self._transaction(lambda conn: conn.execute(statement).scalar(),
                                        write=False))

    def due_services(self, *, now: datetime | None = None) -> set[str]:
        """Services with pending requests due now (see due_services_statement)."""
        statement = due_services_statement(naive_utc(now) or utcnow())
        return self._transaction(
            lambda conn: {service for service, _ in conn.execute(statement)}, write=False)

    def earliest_due(self) -> dict[str, datetime]:
        """Each service with pending requests and its earliest due time (see
        due_services_statement)."""
        statement = due_services_statement(None)

        def read(conn: Connection) -> dict[str, datetime]:
            found = {service: aware_utc(earliest) or _never_none()
                     for service, earliest in conn.execute(statement)}
            # The dispatcher's survey: the limited services are read again on the way.
            self.note_limited(conn.execute(select(limits_table.c.service)).scalars())
            return found

        return self._transaction(read, write=False)

    def stats(self) -> StoreStats:
        """Counts by service and status."""
        statement = select(t.c.service, t.c.status, func.count()).group_by(t.c.service,
                                                                          t.c.status)
        return StoreStats(self._transaction(
            lambda conn: {(service, RequestStatus(status)): count
                          for service, status, count in conn.execute(statement)},
            write=False))

    def list(self, *, service: str | None = None, status: RequestStatus | None = None,
             limit: int = 100, after: str | None = None,
             scheduled: bool | None = None) -> list[StoredRequest]:
        """Requests in UUID (time) order, filtered, paged by `after`; `scheduled` True keeps
        only the scheduled ones, False leaves them out (see shown_state)."""
        statement = select(t).order_by(t.c.id).limit(limit)
        if scheduled is not None:
            waiting = and_(t.c.status == PENDING, t.c.attempts == 0, t.c.due_at > utcnow())
            statement = statement.where(waiting if scheduled else not_(waiting))
        if service is not None:
            statement = statement.where(t.c.service == service)
        if status is not None:
            statement = statement.where(t.c.status == status.value)
        if after is not None:
            statement = statement.where(t.c.id > request_key(after))
        return self._transaction(
            lambda conn: [record(row, CoreValues, self.bodies) for row in conn.execute(statement)],
            write=False)

    def identity(self) -> StoreIdentity:
        """The identity row (made here if the schema was created without the migrations)."""

        def work(conn: Connection) -> str:
            found = conn.execute(select(identity_table.c.id).limit(1)).scalar_one_or_none()
            if found is None:
                found = uuid.uuid4()
                conn.execute(identity_table.insert().values(id=found, created_at=utcnow()))
            return found.hex

        return StoreIdentity(self._transaction(work),
                             self.engine.url.render_as_string(hide_password=True))

    def unfinished_by_owner(self, owners: Sequence[str]) -> dict[str, int]:
        """How many pending or dispatched requests each of these owners has stored."""
        if not owners:
            return {}
        statement = (select(t.c.owner, func.count())
                     .where(t.c.owner.in_(sorted(set(owners))),
                            t.c.status.in_([PENDING, DISPATCHED]))
                     .group_by(t.c.owner))
        return self._transaction(
            # not dict(result): a Result has keys(), so dict() would take it for a mapping
            lambda conn: {owner: count for owner, count in conn.execute(statement)},  # noqa: C416
            write=False)

    def rekey(self, *, batch: int = 500) -> int:
        """Seal every stored body not sealed under the store key's current key (plain ones
        too), safe beside running dispatchers; how many were sealed anew (see store.reseal)."""
        return reseal_bodies(self.bodies, self._transaction, batch=batch)

    def close_store(self) -> None:
        """Release connections, once the transactions under way (other threads') have ended;
        the store refuses new ones from now on (StoreError)."""
        with self._activity:
            self._closed = True
            if not self._activity.wait_for(lambda: not self._active, CLOSE_WAIT_S):
                log.warning("closing the store with %d transactions still running: their "
                            "connections are left to end with them", self._active)
                self.engine.dispose()
                return
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            # A connection another thread is using, or already dead, is left to the pool.
            with contextlib.suppress(SQLAlchemyError):
                conn.close()
        self.engine.dispose()


def _never_none() -> datetime:
    raise AssertionError("a service with pending requests has an earliest due time")


def _is_closed(conn: Connection | PoolProxiedConnection) -> bool:
    if isinstance(conn, Connection):
        return conn.closed
    return conn.dbapi_connection is None  # invalidated or returned to the pool


@dataclass(frozen=True)
class NewBatch:
    """New requests as inserted: a key repeated within the batch is stored once."""

    requests: Sequence[NewRequest]
    ids: Sequence[str]  # a new UUID for each request
    rows: list[tuple[Any, ...]]  # the rows to insert
    row_ids: list[str]  # the UUIDs of `rows`
    first: dict[str, str]  # each key's UUID in this batch

    @classmethod
    def of(cls, requests: Sequence[NewRequest], ids: Sequence[str],
           rows: Sequence[tuple[Any, ...]]) -> NewBatch:
        """The rows to insert for these requests, given their new UUIDs and rows."""
        batch = cls(requests, ids, [], [], {})
        for request_id, row, r in zip(ids, rows, requests, strict=True):
            if r.idempotency_key is not None:
                if r.idempotency_key in batch.first:
                    continue
                batch.first[r.idempotency_key] = request_id
            batch.rows.append(row)
            batch.row_ids.append(request_id)
        return batch

    @property
    def keyed(self) -> bool:
        """Whether any request carries a key (the insert then skips keys stored already)."""
        return bool(self.first)

    @property
    def keys(self) -> list[str]:
        """The keys in this batch."""
        return list(self.first)

    def answer(self, found: Mapping[str, str]) -> list[str]:
        """Each request's UUID: the stored one for a key `found` stored, else this batch's."""
        return [request_id if r.idempotency_key is None else
                found.get(r.idempotency_key, self.first[r.idempotency_key])
                for request_id, r in zip(self.ids, self.requests, strict=True)]


class _NoPsycopgError(Exception):
    """Stands for psycopg's errors while psycopg is not loaded, when none can be raised."""


def _psycopg_error() -> type[Exception]:
    """psycopg.Error once psycopg is loaded (a PostgreSQL engine loads it), else a class that
    nothing raises: a SQLite store never imports psycopg, which need not be installed."""
    module = sys.modules.get("psycopg")
    error: type[Exception] = module.Error if module is not None else _NoPsycopgError
    return error


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
