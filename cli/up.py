"""`titanic up`: the broker serving Titanic itself (and a demo echo worker, a dashboard) as one
supervised command."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import zmq

from titanic._zmq import stop_on_signals
from titanic.security import load_keypair, load_public_key, write_keypair
from titanic.settings import DEFAULT_BROKER, default_database_url
from titanic_cli.exitcodes import Exit
from titanic_cli.lifeline import STOP_GRACE_S, Lifeline
from titanic_cli.options import (
    LogOptions,
    UsageProblem,
    db_option,
    endpoint_error,
    fail,
    handle_errors,
    log_options,
)

log = logging.getLogger("titanic.up")

RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
#: A child exiting with one of these would fail the same way again: bad options, the database
#: (a bad URL, a missing role, a newer schema), a key file, an address it cannot listen on.
CONFIGURATION_EXITS = frozenset({Exit.USAGE, Exit.DATABASE, Exit.KEY, Exit.ADDRESS})
#: Variables the children must not inherit: `up` gives each child its CURVE options and its
#: endpoints itself (a worker endpoint of the broker's own would leave the demo worker out).
_UP_DECIDES = ("TITANIC_CURVE_SERVER_KEY", "TITANIC_CURVE_KEY", "TITANIC_CURVE_SECRET",
               "TITANIC_CURVE_ALLOW", "TITANIC_CURVE_ALLOW_WORKERS", "TITANIC_CURVE_ADMIN",
               "TITANIC_WORKER_BIND")


@dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    lifeline: Lifeline
    process: subprocess.Popen[bytes] | None = None
    delay: float = RESTART_DELAY_S
    restart_at: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        # A session of its own: Ctrl-C reaches only `titanic up`, which stops children in order.
        # The lifeline's read end: the child stops by itself if `up` dies without stopping it.
        self.process = subprocess.Popen(self.argv, start_new_session=True,
                                        env=self.lifeline.env(self.env),
                                        pass_fds=self.lifeline.fds)
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


def _supervise(children: list[_Child], stopping: threading.Event) -> _Child | None:
    """Restart any child that dies, with a growing delay, until asked to stop; a child that
    exits on a configuration error is returned instead (restarting it would fail the same way)."""
    while not stopping.wait(0.2):
        now = time.monotonic()
        for child in children:
            proc = child.process
            if proc is not None and proc.poll() is None:
                if now - child.started_at > 60:
                    child.delay = RESTART_DELAY_S  # it ran long enough to count as healthy
                continue
            if proc is not None and proc.returncode in CONFIGURATION_EXITS:
                return child
            if proc is not None:
                log.error("%s exited with status %s; restarting in %.0f s", child.name,
                          proc.returncode, child.delay)
                child.process = None
                child.restart_at = now + child.delay
                child.delay = min(RESTART_DELAY_MAX_S, child.delay * 2)
            if now >= child.restart_at:
                child.start()
    return None


def _check_bindable(endpoint: str) -> None:
    """BindError (one line, exit 10) if the broker's endpoint cannot be bound, say because the
    port is in use: found before any child starts."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = context.socket(zmq.ROUTER)
        sock.linger = 0
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise endpoint_error(endpoint, exc) from exc
        finally:
            sock.close(0)
    finally:
        context.term()


def _check_dashboard_bindable(address: str) -> None:
    """UsageProblem (exit 2) if the dashboard's address is not HOST:PORT, BindError (exit 10) if
    it cannot be listened on now: found before any child starts."""
    from titanic.ops._http import bind_error, check_bindable
    from titanic.ops.metrics import parse_bind

    try:
        host, port = parse_bind(address)
    except ValueError as exc:
        raise UsageProblem(f"--dashboard: {exc}") from exc
    try:
        check_bindable(host, port)
    except OSError as exc:
        raise bind_error(address, "the dashboard", exc) from exc


@dataclass(frozen=True)
class UpKeys:
    """The CURVE options `up` gives its broker and its own clients (demo worker, dashboard)."""

    folder: Path

    @property
    def broker(self) -> list[str]:
        """The broker's options."""
        return ["--curve-secret", str(self.folder / "broker.key_secret"),
                "--curve-allow", str(self.folder / "allowed"),
                "--curve-admin", str(self.folder / "admin")]

    @property
    def peer(self) -> list[str]:
        """The demo worker's and the dashboard's options."""
        return ["--curve-server-key", str(self.folder / "broker.key"),
                "--curve-key", str(self.folder / "titanic.key_secret")]


def prepare_keys(folder: Path) -> UpKeys:
    """Keys in `folder`, each made if missing: `broker`, `titanic` (the demo worker and the
    dashboard) and `client` (for users' commands); a new pair's public key is also put in
    `allowed/`, and `titanic`'s in `admin/` when that folder is made (the dashboard may then
    see and manage every request). Existing keys are kept and checked, and a key removed from
    `allowed/` or `admin/` stays out."""
    allowed = folder / "allowed"
    allowed.mkdir(mode=0o700, parents=True, exist_ok=True)
    admin = folder / "admin"
    new_admin = not admin.exists()
    admin.mkdir(mode=0o700, exist_ok=True)
    for name in ("broker", "titanic", "client"):
        secret_file = folder / f"{name}.key_secret"
        if not secret_file.exists():
            public_file, _ = write_keypair(folder, name)
            if name != "broker":
                shutil.copyfile(public_file, allowed / public_file.name)
        load_keypair(secret_file)
    load_public_key(folder / "broker.key")
    if new_admin:
        shutil.copyfile(folder / "titanic.key", admin / "titanic.key")
    return UpKeys(folder)


def _site_options(site: str | None, peers: tuple[str, ...]) -> list[str]:
    """The broker's --site and --peer options, checked here (a bad one: exit 2 at once)."""
    from titanic.protocol.peer import check_site_name, parse_peers

    try:
        if site is not None:
            check_site_name(site)
        pairs = parse_peers(peers)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    options = ["--site", site] if site is not None else []
    for name, endpoint in pairs:
        options += ["--peer", f"{name}={endpoint}"]
    return options


@click.command()
@click.option("--bind", default=DEFAULT_BROKER, show_default=True, envvar="TITANIC_BIND",
              help="Broker endpoint [env TITANIC_BIND].")
@db_option
@click.option("--demo", is_flag=True, help="Also run an echo worker for the service 'echo'.")
@click.option("--dashboard", "dashboard_bind", is_flag=False, flag_value="127.0.0.1:8080",
              default=None, metavar="[HOST:PORT]", envvar="TITANIC_UP_DASHBOARD",
              help="Also serve the web dashboard, on 127.0.0.1:8080 unless HOST:PORT is given "
              "(needs the `dashboard` extra) [env TITANIC_UP_DASHBOARD].")
@click.option("--curve-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="TITANIC_CURVE_DIR",
              help="Run everything with CURVE, keys in this folder (made if missing): the broker "
              "admits the public keys in DIR/allowed [env TITANIC_CURVE_DIR].")
@click.option("--site", default=None, metavar="NAME",
              help="This site's name, as its peers know it (`titanic broker --site`) "
              "[env TITANIC_SITE].")
@click.option("--peer", "peers", multiple=True, metavar="NAME=ENDPOINT",
              help="Another site's broker, repeatable (`titanic broker --peer`) "
              "[env TITANIC_PEERS].")
@log_options
@handle_errors
def up(bind: str, db_url: str | None, demo: bool, dashboard_bind: str | None,
       curve_dir: Path | None, site: str | None, peers: tuple[str, ...],
       logs: LogOptions) -> None:
    """Run the broker with the dispatcher in it (`titanic broker --titanic`), restarting it if it
    dies, and the demo worker and the dashboard when asked.

    Uses the embedded SQLite database unless --db says otherwise. Stop with Ctrl-C. The children
    stop by themselves if `up` dies (even by kill -9).

    \b
    Example:
      titanic up --demo
      titanic submit echo hello      # in another terminal: prints a UUID
      titanic fetch <UUID>           # prints hello
      titanic up --demo --curve-dir ~/.config/titanic/curve
      titanic up --demo --dashboard          # and open http://127.0.0.1:8080/
    """
    logs.apply("up")
    _check_bindable(bind)
    if dashboard_bind is not None:
        _check_dashboard_bindable(dashboard_bind)
    keys = prepare_keys(curve_dir) if curve_dir is not None else None
    broker_curve, peer_curve = (keys.broker, keys.peer) if keys else ([], [])
    env = {name: value for name, value in os.environ.items() if name not in _UP_DECIDES}
    lifeline = Lifeline()
    # -P: the children import the installed titanic even when started from a source checkout.
    cli = [sys.executable, "-P", "-m", "titanic_cli"]
    log_argv = logs.argv()
    db = ["--db", db_url] if db_url else []
    sites = _site_options(site, peers)
    children = [_Child("broker", [*cli, "broker", "--bind", bind, "--titanic", *db, *sites,
                                  *broker_curve, *log_argv], env, lifeline)]
    if demo:
        children.append(_Child("echo worker",
                               [*cli, "worker", "echo", "--broker", bind, "--service", "echo",
                                *peer_curve, *log_argv], env, lifeline))
    if dashboard_bind is not None:
        # One token for all the dashboard's restarts, so that its open pages keep working.
        token = {} if {"TITANIC_DASHBOARD_TOKEN", "TITANIC_DASHBOARD_TOKEN_FILE"} & env.keys() \
            else {"TITANIC_DASHBOARD_TOKEN": secrets.token_urlsafe(32)}
        children.append(_Child("dashboard", [*cli, "dashboard", "--broker", bind, "--bind",
                                             dashboard_bind, *peer_curve, *log_argv],
                               {**env, **token}, lifeline))
    click.echo(f"titanic up: broker on {bind}, database {db_url or default_database_url()}"
               + (", echo worker for 'echo'" if demo else "")
               + (f", dashboard on {dashboard_bind} (it prints the address to open)"
                  if dashboard_bind else ""), err=True)
    if keys is not None:
        click.echo(f"titanic up: CURVE on; clients need TITANIC_CURVE_SERVER_KEY="
                   f"{keys.folder / 'broker.key'} and TITANIC_CURVE_KEY="
                   f"{keys.folder / 'client.key_secret'} (or a key of their own whose .key "
                   f"file is in {keys.folder / 'allowed'})", err=True)
    stopping = threading.Event()
    for child in children:
        child.start()
    failed: _Child | None = None
    try:
        with stop_on_signals(stopping.set):
            failed = _supervise(children, stopping)
    finally:
        deadline = time.monotonic() + STOP_GRACE_S
        for child in reversed(children):  # the broker last: its dispatcher drains through it
            child.stop(deadline)
        lifeline.close()
        click.echo("titanic up: stopped", err=True)
    if failed is not None and failed.process is not None:
        code = failed.process.returncode
        fail(f"{failed.name} exited with status {code} (a configuration error, see its message "
             "above): not restarted", Exit(code))
