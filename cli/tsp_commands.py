"""Commands for Titanic itself: submit, fetch, close (over the broker); status, list, retry (DB)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from titanic.errors import ProtocolError
from titanic.protocol.failure import split_last_error
from titanic.protocol.tsp import parse_uuid
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S
from titanic.store import RequestStatus, StoredRequest, open_existing_store
from titanic.tsp_client import ReplyState, TitanicClient
from titanic_cli.exitcodes import Exit
from titanic_cli.mdp_commands import DIALECTS, dialect_option
from titanic_cli.options import (
    CurveOptions,
    UsageProblem,
    broker_option,
    client_options,
    client_session,
    curve_client_options,
    db_option,
    echo_json,
    fail,
    frames_json,
    handle_errors,
    json_option,
    read_payload,
    store_key_option,
)

_STATE_EXIT = {
    ReplyState.PENDING: Exit.PENDING,
    ReplyState.UNKNOWN: Exit.UNKNOWN,
    ReplyState.FAILED: Exit.FAILED,
    ReplyState.EXPIRED: Exit.FAILED,
    ReplyState.ERROR: Exit.ERROR,
}


def _check_uuid(value: str) -> str:
    try:
        return parse_uuid(value.encode())
    except ProtocolError as exc:
        raise click.BadParameter(str(exc)) from exc


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
@json_option
@click.argument("service")
@click.argument("payload", required=False)
@handle_errors
def submit(broker: tuple[str, ...], timeout: float, retries: int, dialect_name: str,
           frames: tuple[str, ...], key: str | None, task_args: str | None, as_json: bool,
           service: str, payload: str | None, curve: CurveOptions) -> None:
    """Store a request for SERVICE and print its UUID.

    PAYLOAD is the first request frame: text, `-` for stdin, or `@FILE` for a file's bytes
    (`@@text` for a literal leading @). With --task-args the request is a call of the task
    SERVICE instead (docs/concepts.md, "Tasks"). The UUID is printed only once the request is
    stored.

    \b
    Example:
      titanic submit echo 'hello'
      titanic submit resize @photo.jpg --frame 640x480
      titanic submit --key order-1234 billing @order.json
      titanic submit resize --task-args '{"args": [{"$bytes": "aGk="}], "kwargs": {"width": 9}}'
    """
    if key is not None and not 0 < len(key) <= 255:
        raise click.BadParameter("must be 1 to 255 characters", param_hint="--key")
    if task_args is not None:
        if payload is not None or frames:
            raise UsageProblem("--task-args is the whole request: give no PAYLOAD or --frame "
                               "with it")
        body = _task_call(service, read_payload(task_args))
    else:
        first = [] if payload is None else [read_payload(payload)]
        body = first + [read_payload(frame) for frame in frames]
    with _client(broker, dialect_name, timeout, retries, curve) as client:
        request_id = client.submit(service, *body, key=key)
        if client.has_workers(service) is False:
            click.echo(f"titanic: warning: service {service!r} has no workers now; the request "
                       "is stored and is sent when one registers", err=True)
    if as_json:
        echo_json({"uuid": request_id, "service": service})
    else:
        click.echo(request_id)


@click.command()
@broker_option
@dialect_option
@click.option("--wait", is_flag=True, help="Poll until the reply arrives or --timeout passes.")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=None,
              envvar="TITANIC_TIMEOUT",
              help="Seconds fetch may take in all [default: 2.5, or 60 with --wait; "
              "env TITANIC_TIMEOUT].")
@click.option("--retries", type=click.IntRange(min=0), default=CLIENT_RETRIES, show_default=True,
              envvar="TITANIC_RETRIES", help="Resends of each call after a timeout.")
@click.option("--raw", is_flag=True, help="Write the reply frames back to back, no newlines.")
@json_option
@curve_client_options
@click.argument("request_id", metavar="UUID")
@handle_errors
def fetch(broker: tuple[str, ...], dialect_name: str, wait: bool, timeout: float | None,
          retries: int, raw: bool, as_json: bool, request_id: str, curve: CurveOptions) -> None:
    """Print the reply to request UUID, one frame per line.

    \b
    Exit status: 0 reply printed, 3 still pending, 4 unknown (or closed),
    5 failed or expired, 6 broker or Titanic unreachable, 9 security handshake refused.

    \b
    Example:
      titanic fetch 0190c6f2a1b47c3e9d2f00112233aabb
      titanic fetch --wait --timeout 30 0190c6f2a1b47c3e9d2f00112233aabb
    """
    total = timeout if timeout is not None else (60.0 if wait else CLIENT_TIMEOUT_S)
    per_call = min(total, CLIENT_TIMEOUT_S)
    request_id = _check_uuid(request_id)
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


#: What _task_result returns for a reply that is not a task's result.
_NOT_A_TASK = object()


def _task_result(reply: list[bytes]) -> object:
    """A task's return value as JSON can hold it (docs/concepts.md, "Tasks"), or _NOT_A_TASK
    when the reply is not a task's result (its frames are then shown as they are)."""
    if len(reply) != 2:  # the shape of a task's result; msgpack is not imported for others
        return _NOT_A_TASK
    from titanic.task_codec import decode_result, is_task_frames, to_json

    if not is_task_frames(reply):
        return _NOT_A_TASK
    try:
        return to_json(decode_result(reply))
    except ProtocolError:
        return _NOT_A_TASK


def _task_call(service: str, text: bytes) -> list[bytes]:
    """The request frames of a task call from --task-args' JSON; UsageProblem saying what is
    wrong with it."""
    from titanic.task_codec import encode_call, from_json

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
    request_id = _check_uuid(request_id)
    with _client(broker, dialect_name, timeout, retries, curve) as client:
        client.close_request(request_id)


def _as_dict(request: StoredRequest) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "uuid": request.id,
        "service": request.service,
        "state": request.status.value,
        "attempts": request.attempts,
        "created_at": when(request.created_at),
        "due_at": when(request.due_at),
        "lease_until": when(request.lease_until),
        "completed_at": when(request.completed_at),
        "deadline": when(request.deadline),
        "last_error": request.last_error,
        "owner": request.owner,
        "request_frames": len(request.request),
        "reply_frames": None if request.reply is None else len(request.reply),
    }


@click.command()
@db_option
@store_key_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("request_id", metavar="UUID")
@handle_errors
def status(db_url: str | None, store_key: Path | None, as_json: bool, request_id: str) -> None:
    """Show request UUID's state, attempts, times and last error (reads the database).

    Exit status 4 if the request is unknown.

    \b
    Example:
      titanic status 0190c6f2a1b47c3e9d2f00112233aabb
    """
    request_id = _check_uuid(request_id)
    store = open_existing_store(db_url, store_key=store_key)
    try:
        found = store.get(request_id)
    finally:
        store.close_store()
    if found is None:
        fail(f"request {request_id} is unknown", Exit.UNKNOWN)
        return
    fields = _as_dict(found)
    if as_json:
        click.echo(json.dumps(fields, indent=2))
        return
    if fields["last_error"]:  # its first line: a traceback may follow it
        fields["last_error"] = split_last_error(str(fields["last_error"]))[0]
    width = max(len(name) for name in fields)
    for name, value in fields.items():
        click.echo(f"{name:<{width}}  {'-' if value is None else value}")


@click.command("list")
@db_option
@store_key_option
@click.option("--service", help="Only this service.")
@click.option("--state", type=click.Choice([s.value for s in RequestStatus]),
              help="Only requests in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--after", metavar="UUID", help="Page on: requests after this UUID.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: one object per request, one per line.")
@handle_errors
def list_requests(db_url: str | None, store_key: Path | None, service: str | None,
                  state: str | None, limit: int, after: str | None, as_json: bool) -> None:
    """List stored requests, oldest first (reads the database).

    \b
    Example:
      titanic list --state failed --service echo
    """
    store = open_existing_store(db_url, store_key=store_key)
    try:
        found = store.list(service=service, status=RequestStatus(state) if state else None,
                           limit=limit, after=_check_uuid(after) if after else None)
    finally:
        store.close_store()
    rows = [_as_dict(request) for request in found]
    if as_json:
        for row in rows:
            echo_json(row)
        return
    click.echo(f"{'UUID':32}  {'SERVICE':20}  {'STATE':10}  {'TRIES':>5}  CREATED")
    for row in rows:
        click.echo(f"{row['uuid']:32}  {row['service'][:20]:20}  {row['state']:10}  "
                   f"{row['attempts']:>5}  {row['created_at']}")


@click.command()
@db_option
@broker_option
@client_options
@curve_client_options
@click.option("--state", type=click.Choice(["failed", "expired"]), default=None,
              help="Retry every request in this state, through the broker (no UUID).")
@click.option("--service", default=None, help="With --state: only this service.")
@click.option("--dry-run", is_flag=True, help="With --state: count, change nothing.")
@click.argument("request_id", metavar="[UUID]", required=False)
@store_key_option
@handle_errors
def retry(db_url: str | None, broker: tuple[str, ...], timeout: float, retries: int,
          curve: CurveOptions, state: str | None, service: str | None, dry_run: bool,
          request_id: str | None, store_key: Path | None) -> None:
    """Send a failed or expired request again, attempts counted afresh.

    With UUID it changes that request in the database (--db); exit status 4 if the request
    is unknown, 1 if it is not failed or expired. With --state instead it asks a dispatcher
    through the broker (titanic.manage) to retry every request in that state, and prints
    how many.

    \b
    Example:
      titanic retry 0190c6f2a1b47c3e9d2f00112233aabb
      titanic retry --state failed --service resize --dry-run
    """
    if (request_id is None) == (state is None):
        raise UsageProblem("give a UUID or --state, not both")
    if state is not None:
        from titanic_cli.manage_commands import bulk_retry

        bulk_retry(broker, timeout, retries, curve, state, service, dry_run)
        return
    if service is not None or dry_run:
        raise UsageProblem("--service and --dry-run go with --state")
    assert request_id is not None
    request_id = _check_uuid(request_id)
    store = open_existing_store(db_url, store_key=store_key)
    try:
        if store.requeue(request_id):
            click.echo(f"request {request_id} is pending again")
            return
        found = store.get(request_id)
    finally:
        store.close_store()
    if found is None:
        fail(f"request {request_id} is unknown", Exit.UNKNOWN)
    else:
        fail(f"request {request_id} is {found.status.value}, not failed or expired", Exit.ERROR)


COMMANDS: list[click.Command] = [submit, fetch, close, status, list_requests, retry]
