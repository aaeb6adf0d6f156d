"""`titanic-dispatcher` (also `titanic dispatcher`): the TSP server and forwarder daemon."""

from __future__ import annotations

import click

from titanic._zmq import stop_on_signals
from titanic.dispatch.standalone import Dispatcher
from titanic.settings import MAX_REQUEST_BYTES, BrokerSettings
from titanic.worker.connection import ConnectionSettings
from titanic_cli.forwarding import ForwardingOptions, forwarding_options
from titanic_cli.options import (
    DIALECTS,
    CurveOptions,
    LogOptions,
    broker_option,
    configure_logging,
    curve_client_options,
    db_option,
    dialect_option,
    handle_errors,
    log_options,
    metrics_option,
    split_brokers,
)


@click.command("dispatcher")
@broker_option
@click.option("--worker-broker", multiple=True, default=None, envvar="TITANIC_WORKER_BROKER",
              callback=split_brokers,
              help="The brokers' separate worker endpoints (their --worker-bind), where the TSP "
              "services register, repeatable or comma-separated; requests are still forwarded "
              "through --broker [env TITANIC_WORKER_BROKER; default: --broker].")
@db_option
@dialect_option
@forwarding_options
@click.option("--heartbeat", type=click.FloatRange(min=0.01),
              default=BrokerSettings().heartbeat_interval, show_default=True,
              envvar="TITANIC_HEARTBEAT", help="MDP heartbeat interval, seconds.")
@click.option("--max-request-size", type=click.IntRange(min=1), default=MAX_REQUEST_BYTES,
              show_default=True, envvar="TITANIC_MAX_REQUEST_SIZE",
              help="Largest request body stored, in bytes; a larger one is answered "
              "'400 bad request' (keep it below the broker's --max-message-size).")
@curve_client_options
@metrics_option
@log_options
@click.option("-v", "--verbose", count=True, help="-v logs every request's life cycle.")
@handle_errors
def dispatcher(broker: tuple[str, ...], worker_broker: tuple[str, ...] | None,
               db_url: str | None, dialect_name: str, forwarding: ForwardingOptions,
               heartbeat: float, max_request_size: int, curve: CurveOptions,
               metrics_bind: str | None, logs: LogOptions, verbose: int) -> None:
    """Serve titanic.request/reply/close and forward stored requests to their workers.

    Brings a fresh database to the current schema first; refuses a newer one (exit 7).
    With CURVE it asks the broker who sends each request (its key must be in the broker's
    --curve-admin folder), and each request belongs to the key that submitted it.

    \b
    Example:
      titanic-dispatcher --broker tcp://127.0.0.1:5555 --db sqlite:////var/lib/titanic/t.db
    """
    logs.apply("dispatcher", verbose)
    hook = curve.hook()
    settings = forwarding.settings(
        broker=broker, worker_broker=worker_broker, dialect=DIALECTS[dialect_name],
        connection=ConnectionSettings(heartbeat_interval=heartbeat),
        identities=hook is not None)
    store = forwarding.open_store(db_url, max_request_size)
    metrics = None
    try:
        server = Dispatcher(store, settings, configure_socket=hook)
        if metrics_bind is not None:
            from titanic.ops.metrics import serve_dispatcher_metrics

            metrics = serve_dispatcher_metrics(metrics_bind, server)
        with stop_on_signals(server.stop):
            server.run()
    finally:
        if metrics is not None:
            metrics.stop()
        store.close_store()


def main() -> None:
    """Console-script entry point for titanic-dispatcher."""
    from titanic_cli.main import run

    configure_logging(0)
    run(dispatcher, "titanic-dispatcher")

