"""`titanic dashboard`: the web dashboard, served until Ctrl-C or SIGTERM."""

from __future__ import annotations

import threading

import click

from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S
from titanic_cli.options import (
    CurveOptions,
    LogOptions,
    broker_option,
    curve_client_options,
    handle_errors,
    log_options,
)

DEFAULT_BIND = "127.0.0.1:8080"


@click.command()
@broker_option
@click.option("--bind", default=DEFAULT_BIND, show_default=True, metavar="HOST:PORT",
              envvar="TITANIC_DASHBOARD_BIND",
              help="Where to serve the page [env TITANIC_DASHBOARD_BIND].")
@click.option("--refresh", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between asking the broker and a dispatcher again.")
@curve_client_options
@log_options
@handle_errors
def dashboard(broker: tuple[str, ...], bind: str, refresh: float, curve: CurveOptions,
              logs: LogOptions) -> None:
    """Serve a web page showing the queue per service, its recent history as a chart, and the
    failed requests with buttons to retry or close each.

    It asks the broker (mmi.broker) and a dispatcher (titanic.manage) like `titanic info`, so
    it needs no database access. Needs the `dashboard` extra: pip install 'titanic[dashboard]'.

    \b
    Example:
      titanic dashboard --bind 127.0.0.1:8080 --broker tcp://127.0.0.1:5555
    """
    logs.apply("dashboard")
    try:
        from titanic.dashboard import DashboardState, create_app
    except ImportError as exc:
        raise click.UsageError(f"the dashboard needs its extra: pip install 'titanic[dashboard]'"
                               f" ({exc})") from exc
    from wsgiref.simple_server import make_server

    from titanic._http import QuietHandler, ThreadingServer, bind_error
    from titanic._zmq import stop_on_signals
    from titanic.manage_client import ManagementClient
    from titanic.metrics import parse_bind
    from titanic.tsp_client import TitanicClient

    hook = curve.hook()
    try:
        host, port = parse_bind(bind)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bind") from exc

    def clients() -> tuple[ManagementClient, TitanicClient]:
        return (ManagementClient(broker, timeout=CLIENT_TIMEOUT_S, retries=CLIENT_RETRIES,
                                 configure_socket=hook),
                TitanicClient(broker, timeout=CLIENT_TIMEOUT_S, retries=CLIENT_RETRIES,
                              configure_socket=hook))

    state = DashboardState(clients, refresh=refresh)
    brokers = ", ".join(broker)
    try:
        server = make_server(host, port, create_app(state, broker=brokers), ThreadingServer,
                             handler_class=QuietHandler)
    except OSError as exc:  # exit 10: `titanic up` does not restart a dashboard for this
        raise bind_error(bind, "the dashboard", exc) from exc
    threads = [threading.Thread(target=state.run, daemon=True, name="dashboard-refresh"),
               threading.Thread(target=server.serve_forever, daemon=True, name="dashboard-http")]
    for thread in threads:
        thread.start()
    click.echo(f"titanic dashboard: http://{host}:{server.server_port}/ (broker {brokers})",
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
