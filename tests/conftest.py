"""Shared fixtures: a throw-away PostgreSQL database, and the store under test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from pg_cluster import server_binaries
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from titanic_support import Processes, start_broker

from titanic.store import Store, open_store

POSTGRES_SERVER = os.environ.get("TITANIC_TEST_POSTGRES_URL",
                                 "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _admin_engine() -> Engine:
    # No pool: a test may restart the server, and a pooled connection would be dead afterwards.
    return create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT", poolclass=NullPool)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server URL; skipped (failed under CI) when no server answers."""
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = f"no PostgreSQL at {POSTGRES_SERVER}: {str(exc.orig).splitlines()[0]}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI requires the PostgreSQL tests)")
        pytest.skip(reason)
    finally:
        engine.dispose()
    return POSTGRES_SERVER


@pytest.fixture
def postgres_bindir() -> Path:
    """PostgreSQL's server binaries, for tests that run servers of their own (restarted,
    killed, failed over); skipped (failed under CI) where they are not installed."""
    found = server_binaries()
    if found is None:
        reason = "PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup) are absent"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI requires the PostgreSQL tests)")
        pytest.skip(reason)
    return found


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database on the server, dropped after the test."""
    name = f"titanic_t_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Processes a test starts; every one still running is killed when the test ends."""
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in the test's folder."""
    return f"sqlite:///{tmp_path / 'titanic.db'}"


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    """A SqlStore on a SQLite file in the test's folder, closed afterwards."""
    store = open_store(sqlite_url)
    yield store
    store.close_store()


@pytest.fixture
def broker() -> Iterator[str]:
    """A broker on a free loopback port with quick heartbeats, in a thread; its endpoint."""
    with ExitStack() as stack:
        yield start_broker(stack).bound[0]


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    """The store under test, for tests of the daemons: a SqlStore on a SQLite file."""
    return sqlite_store


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """An exit stack closed when the test ends: servers in threads, clients, stores."""
    with ExitStack() as stack:
        yield stack
