"""`titanic up`: broker and dispatcher (and a demo echo worker) as one supervised command."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import click

from titanic._zmq import stop_on_signals
from titanic.settings import DEFAULT_BROKER, default_database_url
from titanic_cli.options import db_option, handle_errors

log = logging.getLogger("titanic.up")

RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
STOP_GRACE_S = 10.0


@dataclass
class _Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    delay: float = RESTART_DELAY_S
    restart_at: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        # A session of its own: Ctrl-C reaches only `titanic up`, which stops children in order.
        self.process = subprocess.Popen(self.argv, start_new_session=True)
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def stop(self, deadline: float) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time: killing it", self.name)
            proc.kill()
            proc.wait()


def _supervise(children: list[_Child], stopping: threading.Event) -> None:
    """Restart any child that dies, with a growing delay, until asked to stop."""
    while not stopping.wait(0.5):
        now = time.monotonic()
        for child in children:
            proc = child.process
            if proc is not None and proc.poll() is None:
                if now - child.started_at > 60:
                    child.delay = RESTART_DELAY_S  # it ran long enough to count as healthy
                continue
            if proc is not None:
                log.error("%s exited with status %s; restarting in %.0f s", child.name,
                          proc.returncode, child.delay)
                child.process = None
                child.restart_at = now + child.delay
                child.delay = min(RESTART_DELAY_MAX_S, child.delay * 2)
            if now >= child.restart_at:
                child.start()


@click.command()
@click.option("--bind", default=DEFAULT_BROKER, show_default=True, envvar="TITANIC_BIND",
              help="Broker endpoint [env TITANIC_BIND].")
@db_option
@click.option("--demo", is_flag=True, help="Also run an echo worker for the service 'echo'.")
@handle_errors
def up(bind: str, db_url: str | None, demo: bool) -> None:
    """Run the broker and the dispatcher together, restarting either if it dies.

    Uses the embedded SQLite database unless --db says otherwise. Stop with Ctrl-C.

    \b
    Example:
      titanic up --demo
      titanic submit echo hello      # in another terminal: prints a UUID
      titanic fetch <UUID>           # prints hello
    """
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    # -P: the children import the installed titanic even when started from a source checkout.
    cli = [sys.executable, "-P", "-m", "titanic_cli"]
    db = ["--db", db_url] if db_url else []
    children = [
        _Child("broker", [*cli, "broker", "--bind", bind]),
        _Child("dispatcher", [*cli, "dispatcher", "--broker", bind, *db]),
    ]
    if demo:
        children.append(_Child("echo worker", [*cli, "worker", "echo", "--broker", bind]))
    click.echo(f"titanic up: broker on {bind}, database {db_url or default_database_url()}"
               + (", echo worker for 'echo'" if demo else ""), err=True)
    stopping = threading.Event()
    for child in children:
        child.start()
    try:
        with stop_on_signals(stopping.set):
            _supervise(children, stopping)
    finally:
        deadline = time.monotonic() + STOP_GRACE_S
        for child in reversed(children):  # the broker last: the dispatcher drains through it
            child.stop(deadline)
        click.echo("titanic up: stopped", err=True)
