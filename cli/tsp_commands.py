"""Client commands of Titanic: submit, fetch, close, over the broker. They import the TSP client
and nothing of the store (status, list and retry, which read it, are in store_commands.py)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from titanic.client.answers import PRIORITY_RANGE
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.errors import (
    ProtocolError,
    RequestFailedError,
    TitanicTimeoutError,
    UnknownRequestError,
)
from titanic.protocol.failure import split_last_error
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S
from titanic_cli.exitcodes import Exit
from titanic_cli.options import (
    DIALECTS,
    CurveOptions,
    UsageProblem,
    broker_option,
    check_uuid,
    client_options,
    client_session,
    curve_client_options,
    dialect_option,
    echo_json,
    fail,
    frames_json,
    handle_errors,
    json_option,
    not_before_option,
    read_payload,
    shown,
    utf8_argument,
)

_STATE_EXIT = {
    ReplyState.PENDING: Exit.PENDING,
    ReplyState.UNKNOWN: Exit.UNKNOWN,
    ReplyState.FAILED: Exit.FAILED,
    ReplyState.EXPIRED: Exit.FAILED,
    ReplyState.CANCELLED: Exit.FAILED,
    ReplyState.ERROR: Exit.ERROR,
}


@contextmanager
def _client(broker: tuple[str, ...], dialect_name: str, timeout: float, retries: int,
            curve: CurveOptions) -> Iterator[TitanicClient]:
    with client_session(curve) as (context, hook), TitanicClient(
            broker, dialect=DIALECTS[dialect_name], timeout=timeout, retries=retries,
            context=context, configure_socket=hook) as client:
        yield client


@click.command()
@broker_option
@client_options
@dialect_option
@curve_client_options
@click.option("--frame", "-f", "frames", multiple=True,
              help="A further request frame (repeatable); same forms as PAYLOAD.")
@click.option("--key", default=None, metavar="KEY",
              help="Idempotency key, 1 to 255 characters (an order number, say): a request "
              "with this key already stored is not stored again, and its UUID is printed "
              "[default: a random key, so this command's own retries are stored once].")
@click.option("--task-args", metavar="JSON", default=None,
              help='Call the task SERVICE with these arguments: a JSON object {"args": [...], '
              '"kwargs": {...}} (or - for stdin, @FILE for a file), bytes written '
              '{"$bytes": "<base64>"}; sent as msgpack, instead of PAYLOAD and --frame.')
@click.option("--in", "delay", metavar="DURATION", default=None,
              help="Send it no earlier than this long from now: 30s, 5m, 2h, 1d (scheduled "
              "until then).")
@click.option("--at", "at", metavar="TIME", default=None,
              help="Send it no earlier than this time, ISO 8601 with its time zone: "
              "2026-12-24T18:00:00Z, 2026-12-24T19:00:00+01:00.")
@click.option("--priority", type=click.IntRange(*PRIORITY_RANGE), default=0,
              show_default=True,
              help="Higher ones of the service are sent first (then the oldest due).")
@json_option
@click.argument("service")
@click.argument("payload", required=False)
@handle_errors
def submit(broker: tuple[str, ...], timeout: float, retries: int, dialect_name: str,
           frames: tuple[str, ...], key: str | None, task_args: str | None, delay: str | None,
           at: str | None, priority: int, as_json: bool, service: str, payload: str | None,
           curve: CurveOptions) -> None:
    """Store a request for SERVICE and print its UUID.

    PAYLOAD is the first request frame: text, `-` for stdin, or `@FILE` for a file's bytes
    (`@@text` for a literal leading @). With --task-args the request is a call of the task
    SERVICE instead (see `titanic worker run --help`). The UUID is printed only once the request is
    stored.

    \b
    Example:
      titanic submit echo 'hello'
      titanic submit resize @photo.jpg --frame 640x480
      titanic submit --key order-1234 billing @order.json
      titanic submit --in 30m --priority 5 report @query.json
      titanic submit --at 2026-12-24T18:00:00Z greetings 'Merry Christmas'
      titanic submit resize --task-args '{"args": [{"$bytes": "aGk="}], "kwargs": {"width": 9}}'
    """
    utf8_argument(service, "SERVICE")
    not_before = not_before_option(delay, at)
    if key is not None:
        utf8_argument(key, "--key")
        if not 0 < len(key) <= 255:
            raise UsageProblem(f"--key {shown(key)} must be 1 to 255 characters")
    if task_args is not None:
        if payload is not None or frames:
            raise UsageProblem("--task-args is the whole request: give no PAYLOAD or --frame "
                               "with it")
        body = _task_call(service, read_payload(task_args, "--task-args"))
    else:
        first = [] if payload is None else [read_payload(payload)]
        body = first + [read_payload(frame, "--frame") for frame in frames]
    with _client(broker, dialect_name, timeout, retries, curve) as client:
        request_id = client.submit(service, *body, key=key, not_before=not_before,
                                   priority=priority)
        if client.has_workers(service) is False:
            click.echo(f"titanic: warning: service {shown(service)} has no workers now; the "
                       "request is stored and is sent when one registers", err=True)
    if as_json:
        shown_json: dict[str, Any] = {"uuid": request_id, "service": service}
        if not_before is not None:
            shown_json["not_before"] = not_before.isoformat()
        echo_json(shown_json)
    else:
        click.echo(request_id)


@click.command("submit-many")
@broker_option
@client_options
@dialect_option
@curve_client_options
@click.option("--key-prefix", default=None, metavar="PREFIX",
              help="Give line N the idempotency key PREFIX followed by N (1, 2, ...): the same "
              "input sent again with the same PREFIX stores nothing twice and prints the same "
              "UUIDs [default: a random key per line, so this command's own retries are "
              "stored once].")
@click.argument("service")
@handle_errors
def submit_many(broker: tuple[str, ...], timeout: float, retries: int, dialect_name: str,
                key_prefix: str | None, service: str, curve: CurveOptions) -> None:
    """Store one request for SERVICE per line of standard input; print their UUIDs, one a
    line, in the order of the lines.

    Each line, without its line ending, is one request's only frame. Titanic's server stores
    them in messages of many requests, each message whole or not at all; the UUIDs are printed
    once all are stored. A standard 9/TSP server is sent them one by one.

    \b
    Example:
      seq 1000 | titanic submit-many echo
      titanic submit-many --key-prefix import-2026-12-08: billing < orders.txt
    """
    utf8_argument(service, "SERVICE")
    if key_prefix is not None:
        utf8_argument(key_prefix, "--key-prefix")
    bodies = _lines(sys.stdin.buffer.read())
    keys: list[str | None] | None = None
    if key_prefix is not None:
        keys = [f"{key_prefix}{number}" for number in range(1, len(bodies) + 1)]
        if len(f"{key_prefix}{len(bodies)}") > 255:
            raise UsageProblem(f"--key-prefix {shown(key_prefix)} is too long: a key (the "
                               "prefix and a line number) is at most 255 characters")
    if not bodies:
        return
    with _client(broker, dialect_name, timeout, retries, curve) as client:
        request_ids = client.submit_many(service, bodies, keys)
    sys.stdout.write("".join(f"{request_id}\n" for request_id in request_ids))
    sys.stdout.flush()


def _lines(data: bytes) -> list[bytes]:
    """Standard input's lines without their endings (\\n or \\r\\n); no line after a last
    newline."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


@click.command()
@broker_option
@dialect_option
@click.option("--wait", is_flag=True, help="Poll until the reply arrives or --timeout passes.")
@click.option("--follow", is_flag=True,
              help="Print each part of a streamed reply as it is stored, until the request is "
              "done (a reply that does not stream is one part).")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=None,
              envvar="TITANIC_TIMEOUT",
              help="Seconds fetch may take in all [default: 2.5, or 60 with --wait, or no "
              "limit with --follow; env TITANIC_TIMEOUT].")
@click.option("--retries", type=click.IntRange(min=0), default=CLIENT_RETRIES, show_default=True,
              envvar="TITANIC_RETRIES", help="Resends of each call after a timeout.")
@click.option("--raw", is_flag=True, help="Write the reply frames back to back, no newlines.")
@json_option
@curve_client_options
@click.argument("request_id", metavar="UUID")
@handle_errors
def fetch(broker: tuple[str, ...], dialect_name: str, wait: bool, follow: bool,
          timeout: float | None, retries: int, raw: bool, as_json: bool, request_id: str,
          curve: CurveOptions) -> None:
    """Print the reply to request UUID, one frame per line.

    With --follow, each part of a streamed reply is printed as soon as it is stored, and the
    command ends when the request is done.

    \b
    Exit status: 0 reply printed, 3 still pending, 4 unknown (or closed),
    5 failed or expired, 6 broker or Titanic unreachable, 9 security handshake refused.

    \b
    Example:
      titanic fetch 0190c6f2a1b47c3e9d2f00112233aabb
      titanic fetch --wait --timeout 30 0190c6f2a1b47c3e9d2f00112233aabb
      titanic fetch --follow 0190c6f2a1b47c3e9d2f00112233aabb
    """
    request_id = check_uuid(request_id)
    if follow:
        if wait:
            raise UsageProblem("--follow waits already: give --follow or --wait, not both")
        with _client(broker, dialect_name, CLIENT_TIMEOUT_S, retries, curve) as client:
            _follow(client, request_id, timeout, raw=raw, as_json=as_json)
        return
    total = timeout if timeout is not None else (60.0 if wait else CLIENT_TIMEOUT_S)
    per_call = min(total, CLIENT_TIMEOUT_S)
    show = wait and sys.stderr.isatty()

    def progress(elapsed: float) -> None:
        click.echo(f"\rwaiting for {request_id}: {elapsed:5.1f} s", err=True, nl=False)

    with _client(broker, dialect_name, per_call, retries, curve) as client:
        if wait:
            fetched = client.wait(request_id, total, progress=progress if show else None)
        else:
            fetched = client.fetch(request_id, within=total)
    if show:
        click.echo("", err=True)
    result = _task_result(fetched.reply) if fetched.state is ReplyState.DONE and not raw \
        else _NOT_A_TASK
    if as_json:
        shown: dict[str, Any] = {"uuid": request_id, "state": fetched.state.value}
        if result is not _NOT_A_TASK:
            shown["result"] = result
        elif fetched.state is ReplyState.DONE:
            shown.update(frames_json(fetched.reply))
        elif fetched.text and fetched.text != fetched.state.value:
            error, traceback = split_last_error(fetched.text)
            shown.update({"error": error, **({"traceback": traceback} if traceback else {})})
        echo_json(shown)
        if fetched.state is not ReplyState.DONE:
            sys.exit(int(_STATE_EXIT[fetched.state]))
        return
    if result is not _NOT_A_TASK:
        echo_json(result)
        return
    if fetched.state is ReplyState.DONE:
        out = sys.stdout.buffer
        out.write(b"".join(fetched.reply) if raw else b"".join(f + b"\n" for f in fetched.reply))
        out.flush()
        return
    fail(f"request {request_id} is {fetched}", _STATE_EXIT[fetched.state])


def _follow(client: TitanicClient, request_id: str, timeout: float | None, *, raw: bool,
            as_json: bool) -> None:
    """Print each part of the request's reply as it is stored (its frames one a line, back to
    back with `raw`, one JSON object a part with `as_json`); exit as fetch does when the
    request does not end done."""
    out = sys.stdout.buffer
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    try:
        for seen, part in enumerate(client.follow(request_id, timeout=timeout), 1):
            if as_json:
                echo_json({"uuid": request_id, "part": seen, **frames_json(part)})
                continue
            values = None if raw else _task_values(part)
            if values is not None:  # a task's: each value it yielded (or returned) as JSON
                for value in values:
                    echo_json(value)
                continue
            out.write(b"".join(part) if raw else b"".join(f + b"\n" for f in part))
            out.flush()
    except UnknownRequestError:
        fail(f"request {request_id} is unknown", Exit.UNKNOWN)
    except RequestFailedError as exc:
        fail(str(exc), Exit.FAILED)
    except TitanicTimeoutError:
        if deadline is None or time.monotonic() < deadline:
            raise
        fail(f"request {request_id} is still pending after {seen} part(s)", Exit.PENDING)


def _task_values(part: list[bytes]) -> list[Any] | None:
    """The values one part of a task's reply carries, as JSON can hold them; None for a part
    that is not a task's."""
    if not part or not part[0].startswith(b"titanic.task/1"):  # msgpack imported only then
        return None
    from titanic.tasks.codec import is_task_frames, is_task_stream, to_json
    from titanic.tasks.handles import part_values

    if not (is_task_stream(part) or is_task_frames(part)):
        return None
    try:
        return [to_json(value) for value in part_values(part)]
    except ProtocolError:
        return None


#: What _task_result returns for a reply that is not a task's result.
_NOT_A_TASK = object()


def _task_result(reply: list[bytes]) -> object:
    """A task's return value as JSON can hold it, or _NOT_A_TASK when the reply is not a task's
    result (its frames are then shown as they are)."""
    if not reply or not reply[0].startswith(b"titanic.task/1"):  # msgpack only for tasks
        return _NOT_A_TASK
    from titanic.tasks.codec import decode_result, is_task_frames, is_task_stream, to_json

    if not (is_task_frames(reply) or is_task_stream(reply)):  # a yielding task's: a list
        return _NOT_A_TASK
    try:
        return to_json(decode_result(reply))
    except ProtocolError:
        return _NOT_A_TASK


def _task_call(service: str, text: bytes) -> list[bytes]:
    """The request frames of a task call from --task-args' JSON; UsageProblem saying what is
    wrong with it."""
    from titanic.tasks.codec import encode_call, from_json

    try:
        call = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageProblem(f"--task-args is not JSON: {exc}") from None
    if not isinstance(call, dict) or not set(call) <= {"args", "kwargs"}:
        raise UsageProblem('--task-args must be a JSON object of "args" (an array) and '
                           '"kwargs" (an object), both optional')
    args, kwargs = call.get("args", []), call.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise UsageProblem('--task-args: "args" must be an array and "kwargs" an object')
    try:
        return encode_call(from_json(args, "args"), from_json(kwargs, "kwargs"), service)
    except (TypeError, ValueError) as exc:
        raise UsageProblem(f"--task-args: {exc}") from None


@click.command()
@broker_option
@client_options
@dialect_option
@curve_client_options
@click.argument("request_id", metavar="UUID")
@handle_errors
def close(broker: tuple[str, ...], timeout: float, retries: int, dialect_name: str, request_id: str,
          curve: CurveOptions) -> None:
    """Delete request UUID and its reply (succeeds for unknown UUIDs too).

    \b
    Example:
      titanic close 0190c6f2a1b47c3e9d2f00112233aabb
    """
    request_id = check_uuid(request_id)
    with _client(broker, dialect_name, timeout, retries, curve) as client:
        client.close_request(request_id)


@click.command()
@broker_option
@client_options
@dialect_option
@curve_client_options
@json_option
@click.argument("request_id", metavar="UUID")
@handle_errors
def cancel(broker: tuple[str, ...], timeout: float, retries: int, dialect_name: str,
           as_json: bool, request_id: str, curve: CurveOptions) -> None:
    """Cancel request UUID: never sent if it waits (pending or scheduled); if a worker has it,
    its reply is discarded and a task can see it (titanic.current().cancelled).

    Prints the state it was in. It stays `cancelled` (for status and list) until closed or
    purged. Exit status 4 if the request is unknown, 1 if it had already finished (done,
    failed or expired: nothing changed).

    \b
    Example:
      titanic cancel 0190c6f2a1b47c3e9d2f00112233aabb
    """
    request_id = check_uuid(request_id)
    with _client(broker, dialect_name, timeout, retries, curve) as client:
        try:
            was = client.cancel(request_id)
        except UnknownRequestError:
            fail(f"request {request_id} is unknown (never stored, closed, or purged)",
                 Exit.UNKNOWN)
    finished = was in ("done", "failed", "expired")
    if as_json:
        echo_json({"uuid": request_id, "was": was, "cancelled": not finished})
    elif not finished:
        click.echo(f"cancelled (was {was})")
    if finished:
        fail(f"request {request_id} is {was}: too late to cancel", Exit.ERROR)
