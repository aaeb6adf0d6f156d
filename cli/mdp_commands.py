"""Client commands of the Majordomo layer: call, mmi. They import the MDP client and nothing of
the broker, the worker or the store."""

from __future__ import annotations

import sys

import click

from titanic.client import Client
from titanic.errors import ServiceRefusedError, TitanicTimeoutError, UnreachableError
from titanic.protocol.failure import parse_failure
from titanic.protocol.mmi import SERVICE as MMI_SERVICE
from titanic_cli.exitcodes import Exit
from titanic_cli.options import (
    DIALECTS,
    CurveOptions,
    UsageProblem,
    broker_option,
    client_options,
    client_session,
    curve_client_options,
    dialect_option,
    echo_json,
    fail,
    frames_json,
    given_on_command_line,
    handle_errors,
    json_option,
    read_payload,
    shown,
    utf8_argument,
)


@click.command()
@broker_option
@click.option("--freelance", "servers", metavar="EP1,EP2,...", default=None,
              envvar="TITANIC_FREELANCE",
              help="Call freelance servers (10/FLP: `titanic worker run/echo --bind`) directly, "
              "no broker: endpoints, comma-separated; the first live one answers, another "
              "takes over if it dies, within --timeout x (--retries + 1) seconds in all "
              "[env TITANIC_FREELANCE].")
@client_options
@dialect_option
@curve_client_options
@json_option
@click.argument("service")
@click.argument("frames", nargs=-1)
@handle_errors
def call(broker: tuple[str, ...], servers: str | None, timeout: float, retries: int,
         dialect_name: str, service: str, frames: tuple[str, ...], as_json: bool,
         curve: CurveOptions) -> None:
    """Send one request to SERVICE and print each reply frame on its own line.

    Each FRAME is text, `-` for stdin, `@FILE` for a file's bytes, or `@@text` for a literal
    `@text`. Exit status 5 if the worker reported a failure, 6 if no reply came within the
    timeout and retries, 9 if the broker refused the security handshake; with --freelance, 4
    if no live server has SERVICE.

    \b
    Example:
      titanic call echo hello world
      titanic call resize @photo.jpg 640x480
      titanic call --freelance tcp://10.0.0.1:5600,tcp://10.0.0.2:5600 echo hello
    """
    utf8_argument(service, "SERVICE")
    body = [read_payload(frame, "FRAME") for frame in frames]
    if servers is not None:
        if given_on_command_line("broker"):
            raise UsageProblem("--freelance calls servers directly: give it or --broker, not "
                               "both")
        reply = _call_freelance(servers, timeout * (retries + 1), service, body)
    else:
        reply = _call_broker(broker, timeout, retries, dialect_name, service, body, curve)
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


def _call_broker(broker: tuple[str, ...], timeout: float, retries: int, dialect_name: str,
                 service: str, body: list[bytes], curve: CurveOptions) -> list[bytes]:
    with client_session(curve) as (context, hook), Client(
            broker, dialect=DIALECTS[dialect_name], timeout=timeout, retries=retries,
            context=context, configure_socket=hook) as client:
        try:
            return client.request(service, *body)
        except UnreachableError:
            raise  # its line says already what is down
        except TitanicTimeoutError as exc:
            raise TitanicTimeoutError(f"{exc}: {client.explain_timeout(service)}") from exc


def _call_freelance(servers: str, timeout: float, service: str,
                    body: list[bytes]) -> list[bytes]:
    from titanic.client.freelance import FreelanceClient

    with FreelanceClient(servers, timeout=timeout) as client:
        try:
            return client.request(service, *body)
        except ServiceRefusedError as exc:
            fail(str(exc), Exit.UNKNOWN)


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
        reply = client.request(MMI_SERVICE, utf8_argument(service, "SERVICE"))
    code = reply[0].decode(errors="replace") if reply else ""
    click.echo(code)
    if code != "200":
        fail(f"service {shown(service)} has no live workers", Exit.UNKNOWN)
