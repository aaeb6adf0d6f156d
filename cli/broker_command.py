"""`titanic broker`: the Majordomo broker, and with --titanic the dispatcher inside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
import zmq

from titanic._zmq import stop_on_signals
from titanic.broker import Broker
from titanic.settings import (
    BROKER_MAX_REQUEST_BYTES,
    BUSY_WORKER_TIMEOUT_S,
    DEFAULT_BROKER,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    MAX_MESSAGE_SIZE_BYTES,
    MAX_QUEUED_BYTES_PER_CLIENT,
    PREFETCH_WAIT_S,
    QUEUED_REQUEST_TTL_S,
    SERVICE_QUEUE_LIMIT,
    WORKER_PREFETCH,
    BrokerSettings,
)
from titanic_cli.forwarding import ForwardingOptions, forwarding_options
from titanic_cli.options import (
    CurveServerOptions,
    LogOptions,
    UsageProblem,
    curve_server_options,
    db_option,
    endpoint_error,
    given_on_command_line,
    handle_errors,
    log_options,
    metrics_option,
)

if TYPE_CHECKING:
    from titanic.dispatch.hosted import HostedDispatcher


@click.command()
@click.option("--bind", "binds", multiple=True, envvar="TITANIC_BIND",
              help=f"Endpoint to bind; repeatable [env TITANIC_BIND; default {DEFAULT_BROKER}].")
@click.option("--worker-bind", "worker_binds", multiple=True, envvar="TITANIC_WORKER_BIND",
              help="A separate endpoint for workers; repeatable. Workers must then register "
              "there and clients use --bind [env TITANIC_WORKER_BIND].")
@click.option("--heartbeat", type=click.FloatRange(min=0.01), default=HEARTBEAT_INTERVAL_S,
              show_default=True, envvar="TITANIC_HEARTBEAT", help="Heartbeat interval, seconds.")
@click.option("--liveness", type=click.IntRange(min=1), default=HEARTBEAT_LIVENESS,
              show_default=True, envvar="TITANIC_LIVENESS",
              help="Missed heartbeats before an idle worker is taken for dead.")
@click.option("--busy-timeout", type=click.FloatRange(min=0), default=BUSY_WORKER_TIMEOUT_S,
              show_default=True, envvar="TITANIC_BUSY_TIMEOUT",
              help="Seconds of silence after which a worker busy on a request is taken for dead.")
@click.option("--request-ttl", type=click.FloatRange(min=0.001), default=QUEUED_REQUEST_TTL_S,
              show_default=True, envvar="TITANIC_REQUEST_TTL",
              help="Seconds a request waits for a worker before it is dropped.")
@click.option("--queue-limit", type=click.IntRange(min=1), default=SERVICE_QUEUE_LIMIT,
              show_default=True, envvar="TITANIC_QUEUE_LIMIT",
              help="Requests that may wait per service; beyond, a request is answered "
              "'503 ...' [env TITANIC_QUEUE_LIMIT].")
@click.option("--max-message-size", type=click.IntRange(min=0), default=MAX_MESSAGE_SIZE_BYTES,
              show_default=True, envvar="TITANIC_MAX_MESSAGE_SIZE",
              help="Bytes per frame; libzmq cuts the connection of a peer sending a larger one, "
              "without an answer (0: no limit).")
@click.option("--max-request-size", type=click.IntRange(min=0), default=BROKER_MAX_REQUEST_BYTES,
              show_default=True, envvar="TITANIC_BROKER_MAX_REQUEST_SIZE",
              help="Bytes of request body above which the client is answered '413 ...' instead "
              "of served; keep it below --max-message-size (0: no limit) "
              "[env TITANIC_BROKER_MAX_REQUEST_SIZE].")
@click.option("--max-queued-bytes-per-client", type=click.IntRange(min=1),
              default=MAX_QUEUED_BYTES_PER_CLIENT, show_default=True,
              envvar="TITANIC_MAX_QUEUED_BYTES_PER_CLIENT",
              help="Bytes of requests one client may have waiting for a worker (with CURVE: one "
              "key, all its connections together; else one connection), each counted as its "
              "service name and body plus 256; beyond, it is answered '503 ...' "
              "[env TITANIC_MAX_QUEUED_BYTES_PER_CLIENT].")
@click.option("--prefetch", type=click.IntRange(min=1), default=WORKER_PREFETCH,
              show_default=True, envvar="TITANIC_PREFETCH",
              help="Most requests a worker may hold at once: 1 is strict one-at-a-time; more keep "
              "the next requests waiting in a quick worker's socket, saving a round trip per "
              "request [env TITANIC_PREFETCH].")
@click.option("--prefetch-wait", type=click.FloatRange(min=0), default=PREFETCH_WAIT_S,
              show_default=True, envvar="TITANIC_PREFETCH_WAIT",
              help="Seconds a request may expect to wait at a busy worker: each worker holds "
              "only as many requests as it answers in this time, judged by its recent pace, so "
              "slow work goes one at a time to the first idle worker [env TITANIC_PREFETCH_WAIT].")
@curve_server_options
@click.option("--titanic", "hosted", is_flag=True, envvar="TITANIC_HOSTED",
              help="Also be the Titanic dispatcher: serve titanic.request/reply/close/manage "
              "in this process, storing in --db, and forward stored requests to this broker's "
              "workers; takes the dispatcher's options below [env TITANIC_HOSTED].")
@db_option
@forwarding_options
@metrics_option
@log_options
@click.option("-v", "--verbose", count=True, help="-v logs every message.")
@handle_errors
def broker(binds: tuple[str, ...], worker_binds: tuple[str, ...], heartbeat: float,
           liveness: int, busy_timeout: float, request_ttl: float, queue_limit: int,
           max_message_size: int, max_request_size: int, max_queued_bytes_per_client: int,
           prefetch: int, prefetch_wait: float, curve: CurveServerOptions, hosted: bool,
           db_url: str | None, forwarding: ForwardingOptions, metrics_bind: str | None,
           logs: LogOptions, verbose: int) -> None:
    """Run the Majordomo broker (7/MDP and 18/MDP on one endpoint, with mmi.*).

    With --curve-secret and --curve-allow it speaks CURVE only and admits only the keys in the
    folder (`titanic keygen --help` makes the keys). With --titanic it serves Titanic itself:
    no separate titanic-dispatcher is needed.

    \b
    Example:
      titanic broker --bind tcp://127.0.0.1:5555
      titanic broker --bind tcp://127.0.0.1:5555 --titanic --db /var/lib/titanic/t.db
      titanic broker --bind tcp://*:5555 --worker-bind tcp://10.0.0.1:5556 \\
        --curve-secret broker.key_secret --curve-allow clients/ --curve-allow-workers workers/
    """
    logs.apply("broker", verbose)
    settings = BrokerSettings(
        heartbeat_interval=heartbeat, heartbeat_liveness=liveness,
        busy_worker_timeout=busy_timeout, request_ttl=request_ttl, queue_limit=queue_limit,
        max_message_size=max_message_size, worker_prefetch=prefetch, prefetch_wait=prefetch_wait,
        max_request_size=max_request_size,
        max_queued_bytes_per_client=max_queued_bytes_per_client,
    )
    if db_url is not None and not hosted:
        if given_on_command_line("db_url"):
            raise UsageProblem("--db needs --titanic: a plain broker stores nothing")
        db_url = None  # TITANIC_DATABASE_URL, there for the commands that store: not ours
    server_curve = curve.server(separate_workers=bool(worker_binds))
    store = forwarding.open_store(db_url) if hosted else None
    try:
        host = None
        if store is not None:
            from titanic.dispatch.hosted import HostedDispatcher

            host = HostedDispatcher(store, forwarding.settings(
                identities=server_curve is not None))
        server = Broker(list(binds) or [DEFAULT_BROKER], settings, trace=verbose > 0,
                        curve=server_curve, worker_endpoints=list(worker_binds), host=host)
        _serve_broker(server, host, binds, worker_binds, metrics_bind)
    finally:
        if store is not None:
            store.close_store()


def _serve_broker(server: Broker, host: HostedDispatcher | None, binds: tuple[str, ...],
                  worker_binds: tuple[str, ...], metrics_bind: str | None) -> None:
    metrics = None
    if metrics_bind is not None:  # bound before the broker says it listens, started after
        from titanic.ops.metrics import broker_metrics

        metrics = broker_metrics(metrics_bind, server, host)
    try:
        try:
            server.bind()
        except zmq.ZMQError as exc:
            raise endpoint_error(", ".join([*binds, *worker_binds]) or DEFAULT_BROKER,
                                 exc) from exc
        if metrics is not None:
            metrics.start()
        with stop_on_signals(server.stop):
            server.run()
    finally:
        if metrics is not None:
            metrics.stop()
