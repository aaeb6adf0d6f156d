"""Schema migrations from code, with the scripts shipped in the package (titanic.migrations).

Nothing here looks at the working directory: alembic's configuration is built in memory and the
scripts are found as package resources, so an installed wheel migrates from any folder.

alembic is imported only to migrate or compare: a database already at the newest revision is
recognised from one query and the scripts' own text, so commands that only read the store
(`titanic status`, `titanic list`) and dispatchers on a current database start without it.
"""

from __future__ import annotations

import ast
import importlib.resources
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from titanic.errors import SchemaError, StoreError
from titanic.store.dialect import connect_error, describe

if TYPE_CHECKING:
    from alembic.config import Config

#: alembic's table of the database's revision (its default name, which env.py keeps).
_VERSION_TABLE = "alembic_version"


@contextmanager
def _scripts_dir() -> Iterator[str]:
    with importlib.resources.as_file(importlib.resources.files("titanic.migrations")) as path:
        yield str(path)


def _config(script_location: str, connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this titanic knows."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    with _scripts_dir() as location:
        config = Config()
        config.set_main_option("script_location", location)
        head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def newest_script_revision() -> str | None:
    """The newest revision, read from the scripts' `revision` and `down_revision` lines without
    importing alembic or the scripts: the one revision no other follows (None if there is not
    exactly one: alembic then decides)."""
    follows: dict[str, tuple[str, ...]] = {}
    versions = importlib.resources.files("titanic.migrations") / "versions"
    for script in versions.iterdir():
        if script.name.endswith(".py") and not script.name.startswith("_"):
            values = _assigned(script.read_text(encoding="utf-8"), ("revision", "down_revision"))
            down = values.get("down_revision")
            downs = down if isinstance(down, tuple | list) else (down,) if down else ()
            follows[str(values.get("revision"))] = tuple(str(each) for each in downs)
    followed = {revision for downs in follows.values() for revision in downs}
    heads = [revision for revision in follows if revision not in followed]
    return heads[0] if len(heads) == 1 else None


def _assigned(source: str, names: tuple[str, ...]) -> dict[str, object]:
    """The literal values a module's top level assigns to `names`."""
    values: dict[str, object] = {}
    for node in ast.parse(source).body:
        target, value = ((node.targets[0], node.value) if isinstance(node, ast.Assign)
                         else (node.target, node.value) if isinstance(node, ast.AnnAssign)
                         else (None, None))
        if isinstance(target, ast.Name) and target.id in names and value is not None:
            values[target.id] = ast.literal_eval(value)
    return values


def current_revision(engine: Engine) -> str | None:
    """The database's revision (None for a database never migrated)."""
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(_VERSION_TABLE):
                return None
            found = connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}"))
            revisions = [str(revision) for revision in found.scalars()]
    except SQLAlchemyError as exc:
        raise StoreError(connect_error(exc, engine.url)) from exc
    if len(revisions) > 1:
        raise SchemaError(f"{describe(engine.url)} is at several schema revisions at once "
                          f"({', '.join(sorted(revisions))}), which titanic never makes")
    return revisions[0] if revisions else None


def _known_revisions() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

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
    from alembic import command

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
    if current is not None and current == newest_script_revision():
        return
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
    if current == newest_script_revision():
        return
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
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from titanic.store.models import metadata

    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    if differences:
        raise SchemaError(f"the database schema differs from the models: {differences[0]}")
