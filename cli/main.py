"""The `titanic` click group; each sub-command lives in a module of its own, imported only when
it runs, so `titanic --version` and `titanic --help` start without zmq or SQLAlchemy."""

from __future__ import annotations

import importlib
import sys

import click

from titanic import __version__
from titanic_cli.exitcodes import Exit
from titanic_cli.lifeline import follow_parent

#: Every sub-command: where it lives and its one-line help (for `titanic --help` without
#: importing it; tests/unit/test_cli_startup.py checks these against the commands).
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("titanic_cli.bench:bench", "Measure round trips, acknowledgements and completions."),
    "broker": ("titanic_cli.broker_command:broker", "Run the Majordomo broker."),
    "call": ("titanic_cli.mdp_commands:call", "Send one request to SERVICE and print the reply."),
    "cancel": ("titanic_cli.tsp_commands:cancel",
               "Cancel request UUID: never sent if waiting, its reply discarded if not."),
    "close": ("titanic_cli.tsp_commands:close", "Delete request UUID and its reply."),
    "dashboard": ("titanic_cli.dashboard:dashboard",
                  "Serve a web page of the queue per service and its history."),
    "db": ("titanic_cli.db:db", "Inspect and upgrade the database schema."),
    "dispatcher": ("titanic_cli.dispatcher:dispatcher",
                   "Serve titanic.request/reply/close and forward stored requests."),
    "fetch": ("titanic_cli.tsp_commands:fetch", "Print the reply to request UUID."),
    "info": ("titanic_cli.manage_commands:info",
             "Show the queue per service, and the broker and dispatcher that answer."),
    "keygen": ("titanic_cli.keys:keygen", "Write a CURVE key pair."),
    "limit": ("titanic_cli.store_commands:limit",
              "Set, clear or list the limits of services, kept in the database."),
    "list": ("titanic_cli.store_commands:list_requests", "List stored requests, oldest first."),
    "mmi": ("titanic_cli.mdp_commands:mmi", "Ask the broker whether SERVICE has live workers."),
    "purge": ("titanic_cli.manage_commands:purge", "Delete finished requests in bulk."),
    "retry": ("titanic_cli.store_commands:retry", "Send a failed or expired request again."),
    "status": ("titanic_cli.store_commands:status", "Show request UUID's state and last error."),
    "submit": ("titanic_cli.tsp_commands:submit", "Store a request for SERVICE, print its UUID."),
    "submit-many": ("titanic_cli.tsp_commands:submit_many",
                    "Store one request per line of stdin, print their UUIDs."),
    "up": ("titanic_cli.up:up", "Run the broker with the dispatcher in it (and a demo worker)."),
    "worker": ("titanic_cli.worker_commands:worker", "Run a worker: your own function, or echo."),
}


def load_command(name: str) -> click.Command:
    """Import the sub-command `name`."""
    module, attribute = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module), attribute)
    assert isinstance(command, click.Command)
    return command


class _LazyGroup(click.Group):
    """A group whose commands are imported when they are invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging on stderr: -v info, -vv debug.")
@click.version_option(__version__, prog_name="titanic")
def cli(verbose: int) -> None:
    """Durable request-reply over ZeroMQ Majordomo.

    \b
    Example:
      titanic up --demo &
      titanic submit echo hello        # prints a UUID
      titanic fetch --wait <UUID>      # prints hello
    """
    from titanic_cli.options import configure_logging

    configure_logging(verbose)


def run(command: click.Command, prog_name: str) -> None:
    """Run a click command as a program: Ctrl-C exits 130 (not click's 1), one line on stderr.
    A child of `titanic up` first starts watching for `up`'s death (lifeline.py)."""
    follow_parent()
    try:
        result = command.main(prog_name=prog_name, standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("titanic: interrupted", err=True)
        sys.exit(int(Exit.INTERRUPTED))
    except click.ClickException as exc:
        if isinstance(exc, _HELP_ASKED):  # a group without its command: its help, as it is
            exc.show()
        else:
            click.echo(f"titanic: {_one_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except UnicodeEncodeError as exc:
        if exc.reason != "surrogates not allowed":  # not an argument's bytes: a bug, shown whole
            raise
        # An argument whose bytes are not UTF-8 (Python keeps them as lone surrogates) reached
        # a place that needs text; the commands check theirs by name, this is the backstop.
        from titanic.settings import quoted

        click.echo(f"titanic: an argument is not UTF-8 text: {quoted(exc.object)}", err=True)
        sys.exit(int(Exit.USAGE))
    except BrokenPipeError:
        sys.exit(int(Exit.ERROR))
    sys.exit(result if isinstance(result, int) else 0)


class _NotRaised(Exception):
    """Stands for an exception this click version never raises."""


#: What click raises for a group given no command (click 8.2 on; before, it printed the help).
_HELP_ASKED: type[Exception] = getattr(click.exceptions, "NoArgsIsHelpError", _NotRaised)


def _one_line(exc: click.ClickException) -> str:
    """click's error as one line; a usage error ends pointing to the command's --help."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message[:2].istitle():  # "Missing argument" -> "missing argument", not "UUID ..."
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f"; see '{ctx.command_path} --help'"
    return message


def main() -> None:
    """Console-script entry point."""
    run(cli, "titanic")
