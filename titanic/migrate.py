"""Schema migrations from code, with the scripts shipped in the package (titanic.migrations).

Nothing here looks at the working directory: alembic's configuration is built in memory and the
scripts are found as package resources, so an installed wheel migrates from any folder.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from titanic.errors import SchemaError, StoreError
from titanic.store.dialect import connect_error, describe
from titanic.store.models import Base


@contextmanager
def _scripts_dir() -> Iterator[str]:
    with importlib.resources.as_file(importlib.resources.files("titanic.migrations")) as path:
        yield str(path)


def _config(script_location: str, connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this titanic knows."""
    with _scripts_dir() as location:
        config = Config()
        config.set_main_option("script_location", location)
        head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision (None for a database never migrated)."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreError(connect_error(exc, engine.url)) from exc


def _known_revisions() -> set[str]:
    with _scripts_dir() as location:
        config = Config()
        config.set_main_option("script_location", location)
        return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


#: PostgreSQL advisory lock key held while migrating ("titanic" in ASCII).
_MIGRATION_LOCK = 0x746974616E6963


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest).

    Several dispatchers started at once on a fresh database migrate one after the other: on
    PostgreSQL an advisory lock held for the transaction, on SQLite the immediate transaction;
    alembic reads the revision after taking it, so the later ones find nothing left to do.
    """
    try:
        with _scripts_dir() as location, engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": _MIGRATION_LOCK})
            command.upgrade(_config(location, connection), revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"migration failed: {connect_error(exc, engine.url)}") from exc


def ensure_schema(engine: Engine) -> None:
    """Upgrade a fresh or older database; refuse one from a newer titanic with SchemaError."""
    current = current_revision(engine)
    if current is not None and current not in _known_revisions():
        raise SchemaError(
            f"the database schema is at revision {current}, newer than this titanic knows "
            f"(head {head_revision()}): upgrade titanic instead of using it on this database")
    if current != head_revision():
        upgrade(engine)


def require_current(engine: Engine) -> None:
    """StoreError (SchemaError) naming `titanic db upgrade` unless the database is at head;
    never changes the database."""
    current = current_revision(engine)
    if current is None:
        raise SchemaError(f"{describe(engine.url)} has no titanic tables: run `titanic db "
                          "upgrade` to make them")
    head = head_revision()
    if current != head:
        raise SchemaError(f"{describe(engine.url)} is at schema revision {current}, not {head}: "
                          "run `titanic db upgrade`")


def check(engine: Engine) -> None:
    """SchemaError unless the database is at head and its tables match the models."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaError(f"the database schema is at revision {current or 'none'}, "
                          f"not {head}: run `titanic db upgrade`")
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    if differences:
        raise SchemaError(f"the database schema differs from the models: {differences[0]}")
