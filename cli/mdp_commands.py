"""Commands for the Majordomo layer: broker, worker, call, mmi."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import click
import zmq

from titanic._zmq import stop_on_signals
from titanic.broker import Broker
from titanic.client import Client
from titanic.errors import TitanicTimeoutError
from titanic.protocol.failure import parse_failure
from titanic.protocol.mdp import Dialect
from titanic.protocol.mmi import SERVICE as MMI_SERVICE
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
from titanic.worker import Handler, Worker, echo_handler
from titanic.worker_group import TargetError, WorkerGroup, function_handler, load_target
from titanic_cli.exitcodes import Exit
from titanic_cli.forwarding import ForwardingOptions, forwarding_options
from titanic_cli.options import (
    CurveOptions,
    CurveServerOptions,
    LogOptions,
    UsageProblem,
    broker_option,
    client_options,
    client_session,
    curve_client_options,
    curve_server_options,
    db_option,
    echo_json,
    endpoint_error,
    fail,
    frames_json,
    given_on_command_line,
    handle_errors,
    json_option,
    log_options,
    metrics_option,
    read_payload,
)

if TYPE_CHECKING:
    from titanic.hosted import HostedDispatcher

log = logging.getLogger("titanic.worker")

DIALECTS = {"7": Dialect.MDP01, "18": Dialect.MDP02, "majortomo": Dialect.MAJORTOMO}


dialect_option = click.option(
    "--mdp",
    "dialect_name",
    type=click.Choice(sorted(DIALECTS)),
    default="7",
    show_default=True,
    envvar="TITANIC_MDP",
    help="Protocol spoken: 7 (7/MDP, MDP 0.1), 18 (18/MDP) or majortomo's 0.2 variant "
    "[env TITANIC_MDP].",
)


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
    folder (see docs/security.md). With --titanic it serves Titanic itself: no separate
    titanic-dispatcher is needed (see docs/operations.md).

    \b
    Example:
      titanic broker --bind tcp://127.0.0.1:5555
      titanic broker --bind tcp://127.0.0.1:5555 --titanic --db sqlite:////var/lib/titanic/t.db
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
            from titanic.hosted import HostedDispatcher

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
        from titanic.metrics import broker_metrics

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


worker_heartbeat_option = click.option(
    "--heartbeat", type=click.FloatRange(min=0.01), default=HEARTBEAT_INTERVAL_S,
    show_default=True, envvar="TITANIC_HEARTBEAT",
    help="Heartbeat interval, seconds: use the broker's.")


@click.group()
def worker() -> None:
    """Run a worker: your own function (`worker run`), or the demo echo service."""


@worker.command("run")
@broker_option
@click.option("--service", default=None, envvar="TITANIC_SERVICE",
              help="Service name to register, for a plain function (PKG.MODULE:FUNCTION); "
              "tasks register under their own names [env TITANIC_SERVICE].")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=1, show_default=True,
              envvar="TITANIC_CONCURRENCY",
              help="Requests of each service served at once: one broker connection and thread "
              "each, so N per task for a module of tasks [env TITANIC_CONCURRENCY].")
@dialect_option
@worker_heartbeat_option
@curve_client_options
@log_options
@click.argument("target", metavar="PKG.MODULE[:FUNCTION]")
@handle_errors
def worker_run(broker: tuple[str, ...], service: str | None, concurrency: int,
               dialect_name: str, heartbeat: float, target: str, curve: CurveOptions,
               logs: LogOptions) -> None:
    """Serve the tasks of PKG.MODULE, or SERVICE with your own function PKG.MODULE:FUNCTION.

    PKG.MODULE: every function the module decorates with @titanic.task is served as the
    service of its name, its arguments and result in msgpack (submit with
    `resize.submit(...)`; see docs/concepts.md, "Tasks"); PKG.MODULE:TASK serves that task
    alone. PKG.MODULE:FUNCTION --service SERVICE: a plain function, called with the request
    frames as bytes arguments, returns the reply: bytes, str (sent as UTF-8), or a list of them
    for several frames. Either way an exception is reported to the dispatcher at once, with its
    traceback, and the request is retried after a backoff; raise titanic.PermanentError to fail
    it without retries. The current folder is searched for PKG first, as `python -m` does.

    \b
    Example (shop/tasks.py: @titanic.task def resize(image: bytes, width: int) -> dict: ...):
      titanic worker run shop.tasks --concurrency 4
      titanic worker run shop.raw:resize --service resize
    """
    logs.apply("worker")
    sys.path.insert(0, os.getcwd())
    handlers = _worker_handlers(target, service)
    hook = curve.hook()
    group = WorkerGroup(handlers, concurrency, lambda context, name, handler: Worker(
        broker, name, handler, dialect=DIALECTS[dialect_name], heartbeat_interval=heartbeat,
        context=context, configure_socket=hook))
    log.info("serving %s with %s, %d at a time each", ", ".join(map(repr, handlers)), target,
             concurrency)
    with stop_on_signals(group.stop):
        group.run()


def _worker_handlers(target: str, service: str | None) -> dict[str, Handler]:
    """The handler of each service `worker run` serves, by service name."""
    try:
        loaded = load_target(target)
    except TargetError as exc:
        raise UsageProblem(str(exc)) from exc
    if loaded.function is not None:
        if service is None:
            raise UsageProblem(f"{target} is a plain function: --service (TITANIC_SERVICE) "
                               "names the service it serves")
        return {service: function_handler(loaded.function)}
    if service is not None:
        raise UsageProblem(f"--service (TITANIC_SERVICE) goes with a plain function: the tasks "
                           f"of {target} register under their own names "
                           f"({', '.join(task.name for task in loaded.tasks)})")
    from titanic.task_worker import task_handler

    return {task.name: task_handler(task) for task in loaded.tasks}


@worker.command("echo")
@broker_option
@click.option("--service", default="echo", show_default=True, envvar="TITANIC_SERVICE",
              help="Service name to register.")
@dialect_option
@worker_heartbeat_option
@curve_client_options
@log_options
@handle_errors
def worker_echo(broker: tuple[str, ...], service: str, dialect_name: str, heartbeat: float,
                curve: CurveOptions, logs: LogOptions) -> None:
    """Serve SERVICE by echoing each request back.

    \b
    Example:
      titanic worker echo --broker tcp://127.0.0.1:5555 --service echo
    """
    logs.apply("worker")
    server = Worker(broker, service, echo_handler, dialect=DIALECTS[dialect_name],
                    heartbeat_interval=heartbeat, configure_socket=curve.hook())
    with stop_on_signals(server.stop):
        server.run()


@click.command()
@broker_option
@client_options
@dialect_option
@curve_client_options
@json_option
@click.argument("service")
@click.argument("frames", nargs=-1)
@handle_errors
def call(broker: tuple[str, ...], timeout: float, retries: int, dialect_name: str, service: str,
         frames: tuple[str, ...], as_json: bool, curve: CurveOptions) -> None:
    """Send one request to SERVICE and print each reply frame on its own line.

    Each FRAME is text, `-` for stdin, `@FILE` for a file's bytes, or `@@text` for a literal
    `@text`. Exit status 5 if the worker reported a failure, 6 if no reply came within the
    timeout and retries, 9 if the broker refused the security handshake.

    \b
    Example:
      titanic call echo hello world
      titanic call resize @photo.jpg 640x480
    """
    body = [read_payload(frame) for frame in frames]
    with client_session(curve) as (context, hook), Client(
            broker, dialect=DIALECTS[dialect_name], timeout=timeout, retries=retries,
            context=context, configure_socket=hook) as client:
        try:
            reply = client.request(service, *body)
        except TitanicTimeoutError as exc:
            raise TitanicTimeoutError(f"{exc}: {client.explain_timeout(service)}") from exc
    report = parse_failure(reply)
    if as_json:
        echo_json({"service": service, "state": "failed", "error": report.error,
                   **({"traceback": report.traceback} if report.traceback else {})}
                  if report is not None else {"service": service, **frames_json(reply)})
        if report is not None:
            sys.exit(int(Exit.FAILED))
        return
    if report is not None:
        fail(f"failed: {report.error}", Exit.FAILED)
    out = sys.stdout.buffer
    for frame in reply:
        out.write(frame + b"\n")
    out.flush()


@click.command()
@broker_option
@client_options
@curve_client_options
@click.argument("service")
@handle_errors
def mmi(broker: tuple[str, ...], timeout: float, retries: int, service: str,
        curve: CurveOptions) -> None:
    """Ask the broker whether SERVICE has live workers (mmi.service): prints 200 or 404.

    Exit status 0 for 200, 4 for 404.

    \b
    Example:
      titanic mmi echo
    """
    with client_session(curve) as (context, hook), Client(
            broker, timeout=timeout, retries=retries, context=context,
            configure_socket=hook) as client:
        reply = client.request(MMI_SERVICE, service.encode())
    code = reply[0].decode(errors="replace") if reply else ""
    click.echo(code)
    if code != "200":
        fail(f"service {service!r} has no live workers", Exit.UNKNOWN)


COMMANDS: list[click.Command] = [broker, worker, call, mmi]
