"""`titanic db`: schema migrations, from the scripts inside the installed package."""

from __future__ import annotations

from pathlib import Path

import click

from titanic.errors import MissingDatabaseError
from titanic.settings import default_database_url
from titanic.store import migrate, open_store
from titanic.store.dialect import describe, make_engine
from titanic_cli.options import db_option, handle_errors


@click.group()
def db() -> None:
    """Inspect and upgrade the database schema; make and rotate store keys."""


@db.command()
@db_option
@handle_errors
def upgrade(db_url: str | None) -> None:
    """Bring the database to the current schema (creating it when new).

    A SQLite file's folder must exist (titanic's default folder is made when missing).

    \b
    Example:
      titanic db upgrade --db ./data/titanic.db
      titanic db upgrade --db postgresql://titanic@localhost/titanic
    """
    engine = make_engine(db_url or default_database_url())
    try:
        migrate.ensure_schema(engine)
        click.echo(f"schema at {migrate.current_revision(engine) or 'none'} in "
                   f"{describe(engine.url)}")
    finally:
        engine.dispose()


@db.command()
@db_option
@handle_errors
def current(db_url: str | None) -> None:
    """Print the database's schema revision ("none" if never migrated).

    \b
    Example:
      titanic db current
    """
    try:
        engine = make_engine(db_url or default_database_url(), create=False)
    except MissingDatabaseError:
        click.echo("none")  # no SQLite file yet: never migrated, and left unmade
        return
    try:
        click.echo(migrate.current_revision(engine) or "none")
    finally:
        engine.dispose()


@db.command()
@db_option
@handle_errors
def check(db_url: str | None) -> None:
    """Exit 0 if the schema is current and matches the models; else exit 7 saying why.

    \b
    Example:
      titanic db check && echo "schema is current"
    """
    engine = make_engine(db_url or default_database_url(), create=False)
    try:
        migrate.check(engine)
        click.echo(f"schema at {migrate.head_revision()}: current")
    finally:
        engine.dispose()


@db.command()
@click.argument("key_file", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rotate", is_flag=True,
              help="Add a new first key to an existing file; the old keys stay to open what "
              "they sealed (then run 'titanic db rekey').")
@handle_errors
def keygen(key_file: Path, rotate: bool) -> None:
    """Make a store key file for encryption at rest (mode 0600; never overwritten).

    \b
    Example:
      titanic db keygen /etc/titanic/store.key
      titanic db keygen --rotate /etc/titanic/store.key && titanic db rekey --store-key ...
    """
    from titanic.store.crypto import write_store_key

    made = write_store_key(key_file, rotate=rotate)
    click.echo(f"{'new first key' if rotate else 'store key'} {made.hex()} in {key_file}")


@db.command()
@db_option
@click.option("--store-key", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              envvar="TITANIC_STORE_KEY", required=True,
              help="The store key file; its first key seals [env TITANIC_STORE_KEY].")
@handle_errors
def rekey(db_url: str | None, store_key: Path) -> None:
    """Seal every stored body under the key file's first key (plain ones too).

    Safe while dispatchers run. Afterwards keys after the first can be removed from the file.

    \b
    Example:
      titanic db rekey --store-key /etc/titanic/store.key
    """
    store = open_store(db_url, store_key=store_key)
    try:
        sealed = store.rekey()
        current = store.bodies.current_id
        click.echo(f"sealed {sealed} bodies under key {current.hex() if current else '?'}")
    finally:
        store.close_store()
