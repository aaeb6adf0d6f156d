"""What differs between SQLite and PostgreSQL: engine set-up, transaction start, row locking."""

from __future__ import annotations

import importlib.util
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import URL, Connection, Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import NullPool

from titanic.errors import MissingDatabaseError, StoreError
from titanic.settings import default_data_dir

log = logging.getLogger("titanic.store")

#: Execution option telling the SQLite "begin" hook whether the transaction will write.
SQLITE_WRITE_OPTION = "titanic_sqlite_write"

SQLITE_BUSY_TIMEOUT_MS = 30_000
SYNCHRONOUS_MODES = ("FULL", "NORMAL")

S = TypeVar("S", bound=Select[Any])


#: The URL schemes titanic knows, and the SQLAlchemy driver each means.
_SCHEMES = {
    "sqlite": "sqlite",
    "postgres": "postgresql+psycopg",  # as Heroku and libpq-style tools write it
    "postgresql": "postgresql+psycopg",  # SQLAlchemy would pick psycopg2, which is not installed
}
_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")


def database_url(text: str) -> URL:
    """What a user gave as a database: a URL (`postgres://` and `postgresql://` mean PostgreSQL
    through psycopg), or a plain file path, taken as a SQLite file (relative to the current
    folder unless absolute; `~` is the home folder). StoreError if it is neither.

    SQLite URLs are read as SQLAlchemy reads them: `sqlite:///data/t.db` is the relative path
    `data/t.db`, `sqlite:////var/lib/t.db` (four slashes) the absolute `/var/lib/t.db`."""
    if "://" not in text:
        if not text.strip():
            raise StoreError("the database URL is empty")
        return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))
    scheme, _, rest = text.partition("://")
    driver = _SCHEMES.get(scheme.lower(), scheme.lower())
    if driver not in _DRIVERS:
        raise StoreError(f"unknown database kind {scheme!r} in {_shown(text)}: use "
                         "sqlite:///PATH, a file path, or postgresql://USER@HOST/DB")
    try:
        return make_url(f"{driver}://{rest}")
    except ArgumentError as exc:
        raise StoreError(f"malformed database URL {_shown(text)}: {exc}") from exc


def _shown(text: str) -> str:
    """A URL for a message, its password hidden."""
    try:
        return make_url(text).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(text[:80])


def describe(url: URL) -> str:
    """A database for a message: the SQLite file, or the URL without its password."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def make_engine(url: str | URL, *, sqlite_synchronous: str = "FULL",
                create: bool = True) -> Engine:
    """An engine set up for titanic's access pattern on SQLite or PostgreSQL.

    Without `create`, a SQLite file (and its folder) must exist: StoreError naming `titanic db
    upgrade` if not. StoreError for a URL that is not a database titanic knows."""
    parsed = database_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, sqlite_synchronous, create,
                              relative_url=isinstance(url, str) and _relative_sqlite_url(url))
    _require_psycopg()
    return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10,
                         pool_recycle=3600)


#: What to install for PostgreSQL, in the messages that ask for it.
POSTGRES_EXTRA = "pip install 'titanic-zmq[postgres]'"


def _require_psycopg() -> None:
    """StoreError (one line naming the extra to install) unless psycopg, the PostgreSQL
    driver, can be imported: it is an extra, not installed with titanic itself."""
    if importlib.util.find_spec("psycopg") is None:
        raise StoreError(f"PostgreSQL needs the psycopg driver, which is not installed: "
                         f"{POSTGRES_EXTRA}")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy imports it again, from sys.modules)
    except ImportError as exc:  # installed without its C library (libpq) or binary build
        raise StoreError(f"PostgreSQL needs the psycopg driver, which cannot be loaded "
                         f"({str(exc).splitlines()[0]}): {POSTGRES_EXTRA} brings its "
                         "binary build") from exc


def connect_error(exc: BaseException, url: URL) -> str:
    """One line saying why a database could not be used, with what to do for the usual causes."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    line = line.removeprefix("connection failed: ")
    if "role" in line and "does not exist" in line:
        line += " (create it: createuser NAME, as PostgreSQL's superuser)"
    elif "database" in line and "does not exist" in line:
        line += " (create it: createdb --owner ROLE NAME, as PostgreSQL's superuser)"
    return f"{describe(url)}: {line}"


#: Words of a connection failure that waiting cannot cure: the URL, role, database or
#: credentials are wrong (PostgreSQL's and libpq's wording).
_LASTING = ("does not exist", "authentication failed", "password", "permission denied",
            "no pg_hba.conf entry", "could not translate host name", "invalid ")


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the database server cannot be reached
    now but may be soon: refused or cut connections, a server starting, stopping or in recovery
    (a restart, a failover), SQLite's lock. False for mistakes that waiting cannot fix."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OperationalError):
            text = str(cause.orig).lower()
            if "database is locked" in text:
                return True
            if cause.connection_invalidated:
                return True
            return not any(word in text for word in _LASTING) and "sqlite" not in \
                type(cause.orig).__module__
        cause = cause.__cause__
    return False


def _relative_sqlite_url(text: str) -> bool:
    """Whether a database given as text is a SQLite URL with a relative path (three slashes)."""
    scheme, _, rest = text.partition("://")
    return scheme.lower().startswith("sqlite") and rest.startswith("/") and \
        not rest.startswith("//") and rest[1:] not in ("", ":memory:")


def _sqlite_file(url: URL, create: bool, relative_url: bool) -> Path:
    """The SQLite file a URL names, as an absolute path. With `create`, its folder must exist,
    except titanic's default one (made here, and said in a warning); without, the file too.
    StoreError naming the folder or the file otherwise, never a folder made unasked."""
    path = Path(str(url.database)).expanduser().absolute()
    # How SQLAlchemy read the URL, for a path the user may not have meant.
    reading = (f" (sqlite:///{url.database} is relative to the current folder; an absolute "
               "path takes four slashes: sqlite:////PATH)" if relative_url else "")
    if not create:
        if not path.is_file():
            raise MissingDatabaseError(f"no database at {path}{reading}: run `titanic db "
                                       "upgrade` to make it (or give --db / "
                                       "TITANIC_DATABASE_URL)")
        return path
    if path.parent.is_dir():
        return path
    if path != (default_data_dir() / "titanic.db").absolute():
        raise StoreError(f"no folder {path.parent} for the database {path.name}{reading}: "
                         f"make it first (mkdir -p {path.parent}) or give another --db")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot make the folder {path.parent}: {exc.strerror}") from exc
    log.warning("made the folder %s for titanic's database (its default place; --db or "
                "TITANIC_DATABASE_URL chooses another)", path.parent)
    return path


def _sqlite_engine(url: URL, synchronous: str, create: bool, *,
                   relative_url: bool = False) -> Engine:
    mode = synchronous.upper()
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(f"sqlite synchronous must be one of {SYNCHRONOUS_MODES}, not {mode!r}")
    if url.database and url.database != ":memory:":
        url = url.set(database=str(_sqlite_file(url, create, relative_url)))
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
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enter_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={mode}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A read-then-write in a plain BEGIN fails with "database is locked" under contention;
        # taking the write lock up front (IMMEDIATE) makes writers queue on the busy timeout.
        write = conn.get_execution_options().get(SQLITE_WRITE_OPTION, True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _enter_wal(cursor: Any) -> None:
    """PRAGMA journal_mode=WAL, waiting like any other statement would.

    On a database that is not yet in WAL mode the switch answers "database is locked" at once,
    without the busy handler, while another connection is switching it or reading it (seen with
    four stores opened together on a new file); it is tried again until the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def lock_row(statement: S, conn: Connection) -> S:
    """PostgreSQL: SELECT ... FOR UPDATE for a read-then-write; SQLite: the immediate lock."""
    if conn.dialect.name == "postgresql":
        return statement.with_for_update()
    return statement
