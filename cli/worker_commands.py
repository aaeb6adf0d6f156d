"""`titanic worker`: serve your own functions or tasks (`worker run`), or echo (`worker echo`)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

import click
from click.core import ParameterSource

from titanic._zmq import stop_on_signals
from titanic.logs import quoted_name
from titanic.settings import HEARTBEAT_INTERVAL_S
from titanic.worker.freelance import FreelanceServer
from titanic.worker.group import TargetError, WorkerGroup, function_handler, load_target
from titanic.worker.mdp import Handler, Worker, echo_handler
from titanic_cli.options import (
    DIALECTS,
    CurveOptions,
    LogOptions,
    UsageProblem,
    broker_option,
    curve_client_options,
    dialect_option,
    endpoint_error,
    handle_errors,
    log_options,
)

F = TypeVar("F", bound=Callable[..., object])

log = logging.getLogger("titanic.worker")


worker_heartbeat_option = click.option(
    "--heartbeat", type=click.FloatRange(min=0.01), default=HEARTBEAT_INTERVAL_S,
    show_default=True, envvar="TITANIC_HEARTBEAT",
    help="Heartbeat interval, seconds: use the broker's.")


def freelance_options(func: F) -> F:
    """--bind ENDPOINT and --advertise ENDPOINT: serve Freelance (10/FLP) clients directly."""
    func = click.option(
        "--advertise", metavar="ENDPOINT", default=None, envvar="TITANIC_WORKER_ADVERTISE",
        help="The endpoint clients connect to, when it is not --bind's (a wildcard, a NAT): "
        "the server's identity, which must match what clients give --freelance "
        "[env TITANIC_WORKER_ADVERTISE].")(func)
    return click.option(
        "--bind", "bind", metavar="ENDPOINT", default=None, envvar="TITANIC_WORKER_BIND",
        help="Also serve freelance clients (`titanic call --freelance`, FreelanceClient) "
        "directly on ENDPOINT, no broker between; with it, a broker is used only when --broker "
        "(or TITANIC_BROKER) is given [env TITANIC_WORKER_BIND].")(func)


def _broker_given() -> bool:
    """Whether --broker came from the command line or its environment variable."""
    source = click.get_current_context().get_parameter_source("broker")
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _freelance_server(bind: str | None, advertise: str | None,
                      handlers: Mapping[str, Handler], concurrency: int) -> FreelanceServer | None:
    """The freelance server for --bind, bound (BindError, exit 10, if it cannot be)."""
    import zmq

    if bind is None:
        if advertise is not None:
            raise UsageProblem("--advertise goes with --bind")
        return None
    server = FreelanceServer(bind, dict(handlers), advertise=advertise, concurrency=concurrency)
    try:
        server.bind()
    except zmq.ZMQError as exc:
        raise endpoint_error(bind, exc) from exc
    return server


def _serve(group: WorkerGroup | None, server: FreelanceServer | None) -> None:
    """Run the broker's workers, the freelance server, or both (the server on a thread)."""

    def stop() -> None:
        if group is not None:
            group.stop()
        if server is not None:
            server.stop()

    with stop_on_signals(stop):
        if group is None:
            assert server is not None
            server.run()
            return
        thread = None
        if server is not None:
            thread = threading.Thread(target=server.run, name="freelance", daemon=True)
            thread.start()
        try:
            group.run()
        finally:
            stop()
            if thread is not None:
                thread.join(10)


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
@freelance_options
@dialect_option
@worker_heartbeat_option
@curve_client_options
@log_options
@click.argument("target", metavar="PKG.MODULE[:FUNCTION]")
@handle_errors
def worker_run(broker: tuple[str, ...], service: str | None, concurrency: int,
               bind: str | None, advertise: str | None, dialect_name: str, heartbeat: float,
               target: str, curve: CurveOptions, logs: LogOptions) -> None:
    """Serve the tasks of PKG.MODULE, or SERVICE with your own function PKG.MODULE:FUNCTION.

    PKG.MODULE: every function the module decorates with @titanic.task is served as the
    service of its name, its arguments and result in msgpack (submit with `resize.submit(...)`
    or `titanic submit resize --task-args ...`); PKG.MODULE:TASK serves that task alone.
    PKG.MODULE:FUNCTION --service SERVICE: a plain function, called with the request frames as
    bytes arguments, returns the reply: bytes, str (sent as UTF-8), or a list of them for
    several frames. Either way an exception is reported to the dispatcher at once, with its
    traceback, and the request is retried after a backoff; raise titanic.PermanentError to fail
    it without retries. The current folder is searched for PKG first, as `python -m` does.

    With --bind ENDPOINT the same handlers also serve freelance clients (10/FLP: `titanic
    call --freelance`, FreelanceClient) on ENDPOINT, no broker between, --concurrency at a
    time; a broker is then used only if --broker (or TITANIC_BROKER) is given, and then both
    are served at once from one process.

    \b
    Example (shop/tasks.py: @titanic.task def resize(image: bytes, width: int) -> dict: ...):
      titanic worker run shop.tasks --concurrency 4
      titanic worker run shop.raw:resize --service resize
      titanic worker run shop.raw:resize --service resize --bind tcp://127.0.0.1:5600
    """
    logs.apply("worker")
    sys.path.insert(0, os.getcwd())
    handlers = _worker_handlers(target, service)
    hook = curve.hook()
    from titanic.tasks.clients import configure

    # A task's titanic.current().cancelled, and its own submits, go to the brokers it serves.
    configure(list(broker), curve_server_key=curve.server_key, curve_key=curve.key)
    server = _freelance_server(bind, advertise, handlers, concurrency)
    group = None
    if server is None or _broker_given():
        group = WorkerGroup(handlers, concurrency, lambda context, name, handler: Worker(
            broker, name, handler, dialect=DIALECTS[dialect_name], heartbeat_interval=heartbeat,
            context=context, configure_socket=hook))
    log.info("serving %s with %s, %d at a time each%s", ", ".join(map(quoted_name, handlers)),
             target, concurrency, "" if server is None else f", freelance at {server.identity}")
    _serve(group, server)


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
    from titanic.worker.tasks import task_handler

    return {task.name: task_handler(task) for task in loaded.tasks}


@worker.command("echo")
@broker_option
@click.option("--service", default="echo", show_default=True, envvar="TITANIC_SERVICE",
              help="Service name to register.")
@freelance_options
@dialect_option
@worker_heartbeat_option
@curve_client_options
@log_options
@handle_errors
def worker_echo(broker: tuple[str, ...], service: str, bind: str | None, advertise: str | None,
                dialect_name: str, heartbeat: float, curve: CurveOptions,
                logs: LogOptions) -> None:
    """Serve SERVICE by echoing each request back (--bind: to freelance clients too).

    \b
    Example:
      titanic worker echo --broker tcp://127.0.0.1:5555 --service echo
      titanic worker echo --bind tcp://127.0.0.1:5600
    """
    logs.apply("worker")
    server = _freelance_server(bind, advertise, {service: echo_handler}, 1)
    group = None
    if server is None or _broker_given():
        group = WorkerGroup({service: echo_handler}, 1, lambda context, name, handler: Worker(
            broker, name, handler, dialect=DIALECTS[dialect_name], heartbeat_interval=heartbeat,
            context=context, configure_socket=curve.hook()))
    _serve(group, server)
