"""`titanic-dispatcher` (also `titanic dispatcher`): the TSP server and forwarder daemon."""

from __future__ import annotations

from pathlib import Path

import click

from titanic._zmq import stop_on_signals
from titanic.dispatcher import Dispatcher, DispatcherSettings
from titanic.settings import MAX_REQUEST_BYTES, BrokerSettings
from titanic.store import open_store
from titanic.worker_connection import ConnectionSettings
from titanic_cli.mdp_commands import DIALECTS, dialect_option
from titanic_cli.options import (
    CurveOptions,
    LogOptions,
    broker_option,
    configure_logging,
    curve_client_options,
    db_option,
    handle_errors,
    log_options,
    metrics_option,
    split_brokers,
    store_key_option,
)

_DEFAULTS = DispatcherSettings()


@click.command("dispatcher")
@broker_option
@click.option("--worker-broker", multiple=True, default=None, envvar="TITANIC_WORKER_BROKER",
              callback=split_brokers,
              help="The brokers' separate worker endpoints (their --worker-bind), where the TSP "
              "services register, repeatable or comma-separated; requests are still forwarded "
              "through --broker [env TITANIC_WORKER_BROKER; default: --broker].")
@db_option
@dialect_option
@click.option("--request-timeout", type=click.FloatRange(min=0.01),
              default=_DEFAULTS.request_timeout, show_default=True,
              envvar="TITANIC_REQUEST_TIMEOUT",
              help="Seconds a worker may take on a request before it is retried.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=_DEFAULTS.max_attempts,
              show_default=True, envvar="TITANIC_MAX_ATTEMPTS",
              help="Deliveries tried before a request fails for good.")
@click.option("--backoff", type=click.FloatRange(min=0), default=_DEFAULTS.backoff,
              show_default=True, envvar="TITANIC_BACKOFF",
              help="Seconds before the first retry; doubles on each attempt.")
@click.option("--backoff-max", type=click.FloatRange(min=0), default=_DEFAULTS.backoff_max,
              show_default=True, envvar="TITANIC_BACKOFF_MAX", help="Longest wait between tries.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=_DEFAULTS.max_in_flight,
              show_default=True, envvar="TITANIC_MAX_IN_FLIGHT",
              help="Requests forwarded at once, all services together (one socket to the "
                   "broker each, opened when first needed).")
@click.option("--max-in-flight-per-service", type=click.IntRange(min=1),
              default=_DEFAULTS.max_in_flight_per_service, show_default=True,
              envvar="TITANIC_MAX_IN_FLIGHT_PER_SERVICE",
              help="Most requests forwarded at once to one service: its window starts at 8 "
                   "and widens while replies come back within a quarter of --request-timeout, "
                   "halving when one does not.")
@click.option("--pending-ttl", type=click.FloatRange(min=1), default=_DEFAULTS.pending_ttl,
              show_default=True, envvar="TITANIC_PENDING_TTL",
              help="Seconds after submission when an undelivered request expires.")
@click.option("--reply-ttl", type=click.FloatRange(min=1), default=_DEFAULTS.reply_ttl,
              show_default=True, envvar="TITANIC_REPLY_TTL",
              help="Seconds a finished request and its reply are kept, fetched or not.")
@click.option("--reply-linger", type=click.FloatRange(min=0, max=1),
              default=_DEFAULTS.reply_linger, show_default=True, envvar="TITANIC_REPLY_LINGER",
              help="Seconds a reply may wait to be stored in the next commit of new requests "
              "or claims instead of a commit of its own; a titanic.reply stores what waits "
              "first (0: at once).")
@click.option("--forward-linger", type=click.FloatRange(min=0, max=1),
              default=_DEFAULTS.forward_linger, show_default=True,
              envvar="TITANIC_FORWARD_LINGER",
              help="Requests arriving one at a time, each within this many seconds of the one "
              "before: each is forwarded when the next one comes (it crosses the broker "
              "during that one's commit), at a titanic.reply or titanic.close, or after "
              "twice the time between the two (0: at once).")
@click.option("--heartbeat", type=click.FloatRange(min=0.01),
              default=BrokerSettings().heartbeat_interval, show_default=True,
              envvar="TITANIC_HEARTBEAT", help="MDP heartbeat interval, seconds.")
@click.option("--store-wait", type=click.FloatRange(min=0), default=60.0, show_default=True,
              envvar="TITANIC_STORE_WAIT",
              help="Seconds to keep trying a database server that cannot be reached at start-up "
                   "(restarting, failing over) before giving up with exit 7.")
@click.option("--sqlite-synchronous", type=click.Choice(["FULL", "NORMAL"]), default="FULL",
              show_default=True, envvar="TITANIC_SQLITE_SYNCHRONOUS",
              help="SQLite durability: FULL survives power loss; NORMAL may lose the last "
              "transactions on power loss (not on a crash) and is faster.")
@click.option("--max-request-size", type=click.IntRange(min=1), default=MAX_REQUEST_BYTES,
              show_default=True, envvar="TITANIC_MAX_REQUEST_SIZE",
              help="Largest request body stored, in bytes; a larger one is answered "
              "'400 bad request' (keep it below the broker's --max-message-size).")
@store_key_option
@click.option("--max-stored-per-key", type=click.IntRange(min=0), default=0, show_default=True,
              envvar="TITANIC_MAX_STORED_PER_KEY",
              help="With CURVE: unfinished requests one client key may have stored; beyond, "
              "titanic.request is answered '503 ...' (0: no limit) "
              "[env TITANIC_MAX_STORED_PER_KEY].")
@curve_client_options
@metrics_option
@log_options
@click.option("-v", "--verbose", count=True, help="-v logs every request's life cycle.")
@handle_errors
def dispatcher(broker: tuple[str, ...], worker_broker: tuple[str, ...] | None,
               db_url: str | None, dialect_name: str, request_timeout: float,
               max_attempts: int, backoff: float, backoff_max: float, max_in_flight: int,
               max_in_flight_per_service: int, pending_ttl: float, reply_ttl: float,
               reply_linger: float, forward_linger: float, heartbeat: float, store_wait: float,
               sqlite_synchronous: str, max_request_size: int,
               store_key: Path | None, max_stored_per_key: int, curve: CurveOptions,
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
    settings = DispatcherSettings(
        broker=broker, worker_broker=worker_broker, dialect=DIALECTS[dialect_name],
        request_timeout=request_timeout,
        max_attempts=max_attempts, backoff=backoff, backoff_max=backoff_max,
        max_in_flight=max_in_flight, max_in_flight_per_service=max_in_flight_per_service,
        pending_ttl=pending_ttl, reply_ttl=reply_ttl, reply_linger=reply_linger,
        forward_linger=forward_linger,
        connection=ConnectionSettings(heartbeat_interval=heartbeat),
        identities=hook is not None, max_stored_per_key=max_stored_per_key,
    )
    store = open_store(db_url, sqlite_synchronous=sqlite_synchronous,
                       max_request_bytes=max_request_size, store_key=store_key, wait=store_wait)
    metrics = None
    try:
        server = Dispatcher(store, settings, configure_socket=hook)
        if metrics_bind is not None:
            from titanic.metrics import serve_dispatcher_metrics

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

