"""Options shared by several commands, each with its TITANIC_* environment variable."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from titanic.errors import StoreError, TitanicError, TitanicTimeoutError
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, DEFAULT_BROKER
from titanic_cli.exitcodes import Exit

F = TypeVar("F", bound=Callable[..., Any])


def broker_option(func: F) -> F:
    """--broker ENDPOINT (TITANIC_BROKER)."""
    return click.option(
        "--broker",
        "-b",
        envvar="TITANIC_BROKER",
        default=DEFAULT_BROKER,
        show_default=True,
        help="Broker endpoint to connect to [env TITANIC_BROKER].",
    )(func)


def client_options(func: F) -> F:
    """--timeout and --retries (TITANIC_TIMEOUT, TITANIC_RETRIES) for commands that send."""
    func = click.option(
        "--retries",
        envvar="TITANIC_RETRIES",
        type=click.IntRange(min=0),
        default=CLIENT_RETRIES,
        show_default=True,
        help="Resends after a timeout, each on a new socket [env TITANIC_RETRIES].",
    )(func)
    return click.option(
        "--timeout",
        envvar="TITANIC_TIMEOUT",
        type=click.FloatRange(min=0.001),
        default=CLIENT_TIMEOUT_S,
        show_default=True,
        help="Seconds to wait for each reply [env TITANIC_TIMEOUT].",
    )(func)


def configure_logging(verbosity: int) -> None:
    """Log to stderr: warnings by default, -v info, -vv every message."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def fail(message: str, code: Exit) -> None:
    """Print one line on stderr and exit with a documented code."""
    click.echo(f"titanic: {message}", err=True)
    sys.exit(int(code))


def handle_errors(func: F) -> F:
    """Turn titanic's exceptions into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TitanicTimeoutError as exc:
            fail(str(exc), Exit.UNREACHABLE)
        except StoreError as exc:
            fail(str(exc), Exit.DATABASE)
        except TitanicError as exc:
            fail(str(exc), Exit.ERROR)
        except KeyboardInterrupt:
            fail("interrupted", Exit.ERROR)
        except OSError as exc:
            fail(str(exc), Exit.ERROR)

    return wrapper  # type: ignore[return-value]


def db_option(func: F) -> F:
    """--db URL (TITANIC_DATABASE_URL); the default is the per-user SQLite file."""
    return click.option(
        "--db",
        "db_url",
        envvar="TITANIC_DATABASE_URL",
        default=None,
        help="Database URL, e.g. sqlite:////path/titanic.db or "
        "postgresql+psycopg://user@host/db [env TITANIC_DATABASE_URL; "
        "default: $XDG_DATA_HOME/titanic/titanic.db].",
    )(func)
