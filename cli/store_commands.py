"""Commands that read the database directly: status, list, retry of one request, and the
services' limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from titanic.protocol.failure import split_last_error
from titanic.store import (
    SCHEDULED,
    RequestStatus,
    StoredRequest,
    open_existing_store,
    shown_state,
)
from titanic_cli.exitcodes import Exit
from titanic_cli.options import (
    CurveOptions,
    UsageProblem,
    broker_option,
    check_uuid,
    client_options,
    curve_client_options,
    db_option,
    echo_json,
    fail,
    handle_errors,
    shown,
    store_key_option,
    utf8_argument,
)


def _as_dict(request: StoredRequest, now: datetime) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "uuid": request.id,
        "service": request.service,
        "state": shown_state(request, now),
        "priority": request.priority,
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
    request_id = check_uuid(request_id)
    store = open_existing_store(db_url, store_key=store_key)
    try:
        found = store.get(request_id)
    finally:
        store.close_store()
    if found is None:
        fail(f"request {request_id} is unknown", Exit.UNKNOWN)
        return
    fields = _as_dict(found, datetime.now(UTC))
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
@click.option("--state", type=click.Choice([s.value for s in RequestStatus] + [SCHEDULED]),
              help="Only requests in this state (pending: due now or retried later; "
              "scheduled: waiting for the time they were submitted for).")
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
    if service is not None:
        utf8_argument(service, "--service")
    after = check_uuid(after, "--after") if after else None
    store = open_existing_store(db_url, store_key=store_key)
    try:
        status = RequestStatus.PENDING if state == SCHEDULED else \
            RequestStatus(state) if state else None
        scheduled = {SCHEDULED: True, RequestStatus.PENDING.value: False}.get(state or "")
        found = store.list(service=service, status=status, limit=limit, after=after,
                           scheduled=scheduled)
    finally:
        store.close_store()
    now = datetime.now(UTC)
    rows = [_as_dict(request, now) for request in found]
    if as_json:
        for row in rows:
            echo_json(row)
        return
    click.echo(f"{'UUID':32}  {'SERVICE':20}  {'STATE':10}  {'TRIES':>5}  {'PRIO':>4}  "
               "CREATED / DUE")
    for row in rows:
        time = row["due_at"] if row["state"] == SCHEDULED else row["created_at"]
        click.echo(f"{row['uuid']:32}  {row['service'][:20]:20}  {row['state']:10}  "
                   f"{row['attempts']:>5}  {row['priority']:>4}  {time}")


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
    request_id = check_uuid(request_id)
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


def _rate(text: str | None) -> float | None:
    """--rate R/s (or R): requests a second; UsageProblem for anything else."""
    if text is None:
        return None
    number = text.strip().lower().removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        raise UsageProblem(f"--rate {text!r} is not a rate such as 20/s or 0.5/s") from None
    if not 0 < rate <= 1_000_000:  # NaN fails this too
        raise UsageProblem(f"--rate {text!r} must be more than 0 and at most 1000000/s")
    return rate


@click.command("limit")
@db_option
@click.option("--max-in-flight", type=click.IntRange(0, 1_000_000), default=None,
              help="At most N requests of SERVICE in workers' hands at once, across every "
              "dispatcher and broker of the store.")
@click.option("--rate", "rate_text", metavar="R/s", default=None,
              help="At most R requests of SERVICE sent a second (20/s, 0.5/s), across every "
              "dispatcher and broker of the store.")
@click.option("--burst", type=click.FloatRange(1, 1_000_000), default=None,
              help="With --rate: how many may go at once after a quiet spell [default: 1, "
              "evenly paced].")
@click.option("--clear", is_flag=True, help="Remove SERVICE's limit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per limit.")
@click.argument("service", required=False)
@handle_errors
def limit(db_url: str | None, max_in_flight: int | None, rate_text: str | None,
          burst: float | None, clear: bool, as_json: bool, service: str | None) -> None:
    """Set, clear or list the limits of services, kept in the database: every dispatcher and
    broker on it honours them together (within a second of a change).

    Without SERVICE: lists every limit. Exit status 4 for --clear of a service without one.

    \b
    Example:
      titanic limit resize --max-in-flight 2 --rate 20/s
      titanic limit resize --clear
      titanic limit
    """
    rate = _rate(rate_text)
    changing = max_in_flight is not None or rate is not None or burst is not None
    if service is None and (changing or clear):
        raise UsageProblem("name the SERVICE to limit or clear")
    if service is not None:
        utf8_argument(service, "SERVICE")
        if clear == changing:
            raise UsageProblem("give --max-in-flight and/or --rate, or --clear")
        if burst is not None and rate is None:
            raise UsageProblem("--burst goes with --rate")
    store = open_existing_store(db_url)
    try:
        if service is None:
            found = store.limits()
        elif clear:
            if not store.clear_limit(service):
                fail(f"service {shown(service)} has no limit", Exit.UNKNOWN)
            click.echo(f"limit of {shown(service)} cleared")
            return
        else:
            found = [store.set_limit(service, max_in_flight=max_in_flight, rate=rate,
                                     burst=burst)]
    finally:
        store.close_store()
    rows = [{"service": x.service, "max_in_flight": x.max_in_flight, "rate": x.rate,
             "burst": x.burst} for x in found]
    if as_json:
        for row in rows:
            echo_json(row)
        return
    click.echo(f"{'SERVICE':24} {'MAX IN FLIGHT':>13} {'RATE/S':>10} {'BURST':>8}")
    for row in rows:
        click.echo(f"{str(row['service'])[:24]:24} {_shown_number(row['max_in_flight']):>13} "
                   f"{_shown_number(row['rate']):>10} {_shown_number(row['burst']):>8}")


def _shown_number(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)
