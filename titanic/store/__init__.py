"""The request store: the only package that imports SQLAlchemy.

`open_store(url)` gives a SqlStore on SQLite or PostgreSQL with the schema brought up to date;
titanic.testing.MemoryStore behaves the same in memory. It owns the Store contract (`types`),
its SQL (`sql`, `hot`, `pipeline`, `sqlite_turn`, `dialect`, `models`, `rows`, `frames`,
`overview`), bodies sealed at rest (`crypto`, `reseal`) and the schema's migrations
(`migrate`, running the alembic scripts of `titanic.migrations`). It may import the
foundation (`titanic.errors`, `settings`), `titanic.protocol` and `titanic.security` (the key
files' checks); nothing else of titanic imports SQLAlchemy or alembic.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from titanic.settings import MAX_REQUEST_BYTES, default_database_url
from titanic.store.types import (
    FINISHED,
    PRIORITY_MAX,
    PRIORITY_MIN,
    REQUEUABLE,
    SCHEDULED,
    Delivery,
    Exchange,
    NewRequest,
    RequestStatus,
    ServiceLimit,
    ServiceSummary,
    Store,
    StoredRequest,
    StoreIdentity,
    StoreStats,
    check_new_request,
    check_request_id,
    new_request_id,
    shown_state,
)

log = logging.getLogger("titanic.store")


def open_store(url: str | None = None, *, sqlite_synchronous: str = "FULL",
               max_request_bytes: int = MAX_REQUEST_BYTES, migrate: bool = True,
               store_key: str | Path | None = None, wait: float = 0.0) -> SqlStore:
    """A SqlStore for `url` (default: TITANIC_DATABASE_URL, else the per-user SQLite file).

    With `migrate`, a fresh or older database is brought to the current schema first, and a
    database from a newer titanic is refused with SchemaError. With `store_key` (a key file,
    see titanic.store.crypto) request and reply bodies are encrypted at rest. With `wait`, a
    server that cannot be reached (down, restarting, failing over) is tried again for up to that
    many seconds before StoreError; a wrong URL, role, database or password fails at once.
    """
    from titanic.errors import StoreError
    from titanic.store.crypto import bodies_for
    from titanic.store.dialect import unreachable
    from titanic.store.migrate import ensure_schema

    bodies = bodies_for(store_key)  # a bad key file fails before the database is touched
    engine = _engine(url, sqlite_synchronous, create=True)
    deadline = time.monotonic() + wait
    delay = 0.1
    while migrate:
        try:
            ensure_schema(engine)
            break
        except StoreError as exc:
            left = deadline - time.monotonic()
            if left <= 0 or not unreachable(exc):
                engine.dispose()
                raise
            log.warning("%s; trying again for %.0f s more", exc, left)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)
        except BaseException:
            engine.dispose()
            raise
    store = SqlStore(engine, max_request_bytes=max_request_bytes, bodies=bodies)
    if migrate:
        store.prime_limits()
    return store


def open_existing_store(url: str | None = None, *,
                        store_key: str | Path | None = None) -> SqlStore:
    """A SqlStore on a database that exists at the current schema, for commands that only look
    or change rows: it never creates a folder, a file or tables and never migrates. StoreError
    (one line, naming `titanic db upgrade`) for a missing or outdated database."""
    from titanic.store.crypto import bodies_for
    from titanic.store.migrate import require_current

    bodies = bodies_for(store_key)
    engine = _engine(url, "FULL", create=False)
    try:
        require_current(engine)
    except BaseException:
        engine.dispose()
        raise
    return SqlStore(engine, bodies=bodies)


def _engine(url: str | None, sqlite_synchronous: str, *, create: bool) -> Engine:
    from titanic.errors import StoreError
    from titanic.store.dialect import make_engine

    try:
        return make_engine(url or default_database_url(), sqlite_synchronous=sqlite_synchronous,
                           create=create)
    except (ValueError, ImportError) as exc:
        raise StoreError(f"cannot open database: {exc}") from exc


from titanic.store.sql import SqlStore  # noqa: E402  (needs the names above)

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "FINISHED",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "REQUEUABLE",
    "SCHEDULED",
    "Delivery",
    "Exchange",
    "NewRequest",
    "RequestStatus",
    "ServiceLimit",
    "ServiceSummary",
    "SqlStore",
    "Store",
    "StoreIdentity",
    "StoreStats",
    "StoredRequest",
    "check_new_request",
    "check_request_id",
    "new_request_id",
    "open_existing_store",
    "open_store",
    "shown_state",
]
