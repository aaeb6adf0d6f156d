"""The `titanic` click group; each sub-command lives in a module of its own."""

from __future__ import annotations

import click

from titanic import __version__
from titanic_cli.options import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging on stderr: -v info, -vv debug.")
@click.version_option(__version__, prog_name="titanic")
def cli(verbose: int) -> None:
    """Durable request-reply over ZeroMQ Majordomo.

    \b
    Example:
      titanic broker --bind tcp://127.0.0.1:5555 &
      titanic worker echo &
      titanic call echo hello
    """
    configure_logging(verbose)


def _register() -> None:
    from titanic_cli import (
        bench,
        dashboard,
        db,
        dispatcher,
        keys,
        manage_commands,
        mdp_commands,
        tsp_commands,
        up,
    )

    for command in [*mdp_commands.COMMANDS, *tsp_commands.COMMANDS, *manage_commands.COMMANDS,
                    dispatcher.dispatcher, dashboard.dashboard, up.up, db.db, bench.bench,
                    keys.keygen]:
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="titanic")
