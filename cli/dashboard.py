"""`titanic dashboard`: the web dashboard, served until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import click

from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S
from titanic_cli.options import (
    CurveOptions,
    LogOptions,
    UsageProblem,
    broker_option,
    curve_client_options,
    handle_errors,
    log_options,
)

if TYPE_CHECKING:
    from titanic.ops._http import ThreadingServer
    from titanic.ops.dashboard.access import Access

DEFAULT_BIND = "127.0.0.1:8080"
#: The token itself, for a supervisor that keeps one token across restarts (`titanic up`).
TOKEN_VARIABLE = "TITANIC_DASHBOARD_TOKEN"


def _split_hosts(ctx: click.Context, param: click.Parameter,
                 value: tuple[str, ...]) -> tuple[str, ...]:
    """Every --allow-host value (or TITANIC_DASHBOARD_ALLOW_HOST) split on commas."""
    return tuple(part.strip() for item in value for part in item.split(",") if part.strip())


@click.command()
@broker_option
@click.option("--bind", default=DEFAULT_BIND, show_default=True, metavar="HOST:PORT",
              envvar="TITANIC_DASHBOARD_BIND",
              help="Where to serve the page [env TITANIC_DASHBOARD_BIND].")
@click.option("--refresh", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between asking the broker and a dispatcher again.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME[:PORT]",
              envvar="TITANIC_DASHBOARD_ALLOW_HOST", callback=_split_hosts,
              help="Also answer to this Host name (a DNS name of this machine, a proxy's); "
              "repeatable or comma-separated [env TITANIC_DASHBOARD_ALLOW_HOST].")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="TITANIC_DASHBOARD_TOKEN_FILE",
              help="Read the token from this file (mode 600) instead of making one "
              "[env TITANIC_DASHBOARD_TOKEN_FILE].")
@click.option("--read-needs-token", is_flag=True, envvar="TITANIC_DASHBOARD_READ_NEEDS_TOKEN",
              help="Need the token to read on loopback too (always needed beyond loopback) "
              "[env TITANIC_DASHBOARD_READ_NEEDS_TOKEN].")
@curve_client_options
@log_options
@handle_errors
def dashboard(broker: tuple[str, ...], bind: str, refresh: float, allow_hosts: tuple[str, ...],
              token_file: Path | None, read_needs_token: bool, curve: CurveOptions,
              logs: LogOptions) -> None:
    """Serve a web page showing the queue per service, its recent history as a chart, and the
    failed requests with buttons to retry or close each.

    It asks the broker (mmi.broker) and a dispatcher (titanic.manage) like `titanic info`, so
    it needs no database access. It answers only to its own Host names; its actions need the
    token printed at start (or the one in --token-file), and bound beyond loopback so does
    reading: open the address it prints. Needs the `dashboard` extra:
    pip install 'titanic-zmq[dashboard]'.

    \b
    Example:
      titanic dashboard --bind 127.0.0.1:8080 --broker tcp://127.0.0.1:5555
      titanic dashboard --bind 0.0.0.0:8080 --allow-host ops.example.com
    """
    logs.apply("dashboard")
    try:
        from titanic.ops.dashboard import Access, DashboardState, allowed_hosts, create_app
    except ImportError as exc:
        raise click.UsageError("the dashboard needs its extra: pip install "
                               f"'titanic-zmq[dashboard]' ({exc})") from exc
    from titanic._zmq import stop_on_signals
    from titanic.client.manage import ManagementClient
    from titanic.client.tsp import TitanicClient
    from titanic.ops._http import bind_error
    from titanic.ops.dashboard.access import TokenError, is_loopback, shown_host
    from titanic.ops.metrics import parse_bind

    hook = curve.hook()
    try:
        host, port = parse_bind(bind)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bind") from exc
    try:
        token = _token(token_file)
        allowed_hosts(host, port, allow_hosts, machine=())  # a malformed name, before binding
    except (TokenError, ValueError) as exc:
        raise UsageProblem(str(exc)) from exc

    def clients() -> tuple[ManagementClient, TitanicClient]:
        return (ManagementClient(broker, timeout=CLIENT_TIMEOUT_S, retries=CLIENT_RETRIES,
                                 configure_socket=hook),
                TitanicClient(broker, timeout=CLIENT_TIMEOUT_S, retries=CLIENT_RETRIES,
                              configure_socket=hook))

    try:
        server = _server(host, port)
    except OSError as exc:  # exit 10: `titanic up` does not restart a dashboard for this
        raise bind_error(bind, "the dashboard", exc) from exc
    port = server.server_port  # the one bound, for --bind HOST:0
    access = Access(allowed_hosts(host, port, allow_hosts), token, port,
                    read_needs_token or not is_loopback(host))
    state = DashboardState(clients, refresh=refresh)
    brokers = ", ".join(broker)
    server.set_app(create_app(state, broker=brokers, access=access))
    threads = [threading.Thread(target=state.run, daemon=True, name="dashboard-refresh"),
               threading.Thread(target=server.serve_forever, daemon=True, name="dashboard-http")]
    for thread in threads:
        thread.start()
    click.echo(_start_line(access, shown_host(host, allow_hosts), token_file, brokers),
               err=True)
    stopping = threading.Event()
    try:
        with stop_on_signals(stopping.set):
            while not stopping.wait(1.0):
                pass
    finally:
        state.stop()
        server.shutdown()
        for thread in threads:
            thread.join(10)
        server.server_close()


def _token(token_file: Path | None) -> str:
    """The token: the user's file's, else TITANIC_DASHBOARD_TOKEN's, else a new one."""
    from titanic.ops.dashboard.access import check_token, make_token, read_token_file

    if token_file is not None:
        return read_token_file(token_file)
    given = os.environ.get(TOKEN_VARIABLE)
    return check_token(given, TOKEN_VARIABLE) if given is not None else make_token()


def _start_line(access: Access, host: str, token_file: Path | None, brokers: str) -> str:
    """The one line that says where the page is and what opening it needs; the token shown
    unless it came from the user's file (then the file is named instead)."""
    from titanic.ops.dashboard.access import TOKEN_HEADER, TOKEN_PARAMETER

    base = f"http://{host}:{access.port}/"
    named = f"<the token in {token_file}>" if token_file is not None else None
    if access.reading_needs_token:
        shown = named or quote(access.token, safe="")
        return (f"titanic dashboard: open {base}?{TOKEN_PARAMETER}={shown} (broker {brokers}; "
                f"scripts send the header {TOKEN_HEADER}: the token)")
    return (f"titanic dashboard: {base} (broker {brokers}; scripts' actions send the header "
            f"{TOKEN_HEADER}: {named or access.token})")


def _server(host: str, port: int) -> ThreadingServer:
    """The WSGI server bound to host:port (an IPv6 address too), its app set later."""
    from titanic.ops._http import QuietHandler, ThreadingServer

    class IPv6Server(ThreadingServer):
        address_family = socket.AF_INET6

    return (IPv6Server if ":" in host else ThreadingServer)((host, port), QuietHandler)
