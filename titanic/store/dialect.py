"""What differs between SQLite and PostgreSQL: engine set-up, transaction start, row locking."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

#: Execution option telling the SQLite "begin" hook whether the transaction will write.
SQLITE_WRITE_OPTION = "titanic_sqlite_write"

SQLITE_BUSY_TIMEOUT_MS = 30_000
SYNCHRONOUS_MODES = ("FULL", "NORMAL")

S = TypeVar("S", bound=Select[Any])


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine set up for titanic's access pattern on SQLite or PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, sqlite_synchronous)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                         pool_recycle=3600)


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    mode = synchronous.upper()
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(f"sqlite synchronous must be one of {SYNCHRONOUS_MODES}, not {mode!r}")
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # No pool: SqlStore keeps a connection per thread (two: one whose commits skip the fsync),
    # and a pool's size limit would only make many threads wait for one another.
    engine = create_engine(url, poolclass=NullPool,
                           connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                         "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own BEGIN handling is off: the "begin" hook below starts transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={mode}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A read-then-write in a plain BEGIN fails with "database is locked" under contention;
        # taking the write lock up front (IMMEDIATE) makes writers queue on the busy timeout.
        write = conn.get_execution_options().get(SQLITE_WRITE_OPTION, True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def lock_row(statement: S, conn: Connection) -> S:
    """PostgreSQL: SELECT ... FOR UPDATE for a read-then-write; SQLite: the immediate lock."""
    if conn.dialect.name == "postgresql":
        return statement.with_for_update()
    return statement
