"""`titanic db`: schema migrations, from the scripts inside the installed package."""

from __future__ import annotations

import click

from titanic import migrate
from titanic.settings import default_database_url
from titanic.store.dialect import make_engine
from titanic_cli.options import db_option, handle_errors


@click.group()
def db() -> None:
    """Inspect and upgrade the database schema."""


@db.command()
@db_option
@handle_errors
def upgrade(db_url: str | None) -> None:
    """Bring the database to the current schema (creating it when new).

    \b
    Example:
      titanic db upgrade --db postgresql+psycopg://titanic@localhost/titanic
    """
    engine = make_engine(db_url or default_database_url())
    try:
        migrate.ensure_schema(engine)
        click.echo(f"schema at {migrate.current_revision(engine)}")
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
    engine = make_engine(db_url or default_database_url())
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
    engine = make_engine(db_url or default_database_url())
    try:
        migrate.check(engine)
        click.echo(f"schema at {migrate.head_revision()}: current")
    finally:
        engine.dispose()
