"""Commands that look at and act on the whole queue through the broker: info, purge (and the
bulk form of retry): they need no database credentials."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from titanic_cli.options import (
    CurveOptions,
    broker_option,
    client_options,
    client_session,
    curve_client_options,
    handle_errors,
    shown,
)

if TYPE_CHECKING:
    from titanic.client.manage import ManagementClient

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\A(\d+(?:\.\d+)?)([smhdw]?)\Z")


def parse_duration(value: str) -> float:
    """`90`, `90s`, `15m`, `12h`, `1d`, `2w` as seconds; ValueError otherwise."""
    match = _DURATION.match(value.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {shown(value)} (e.g. 90s, 15m, 12h, 1d, 2w)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@contextmanager
def management(broker: tuple[str, ...], timeout: float, retries: int,
               curve: CurveOptions) -> Iterator[ManagementClient]:
    """A ManagementClient for one command (CURVE as the options say)."""
    from titanic.client.manage import ManagementClient

    with client_session(curve) as (context, hook), ManagementClient(
            broker, timeout=timeout, retries=retries, context=context,
            configure_socket=hook) as client:
        yield client


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _site_lines(sites: dict[str, Any] | None) -> list[str]:
    """This site's peers, one line each: the link, its services, what waits and flows."""
    if not sites or not sites.get("peers"):
        return []
    lines = []
    now = time.time()
    for peer in sites["peers"]:
        since = f" {_age(now - peer['since'])}" if peer.get("since") else ""
        services = ", ".join(f"{name}({counts['workers']})"
                             for name, counts in peer["services"].items()) or "-"
        lines.append(f"peer        {peer['name']} {peer['endpoint']}  link "
                     f"{'up' if peer['up'] else 'DOWN'}{since}  services {services}  "
                     f"waiting {peer['waiting']}  in flight {peer['in_flight']}  "
                     f"{peer['forwarded_per_minute']} forwarded, "
                     f"{peer['answered_per_minute']} answered /min")
    return [f"site        {sites['site']}", *lines]


def render_info(view: dict[str, Any]) -> str:
    """`titanic info` as text: who answers, then one line per service."""
    lines = []
    for broker in view["brokers"]:
        if broker.get("error"):
            lines.append(f"broker      {broker['endpoint']}  not answering")
        elif broker.get("version") is None:
            lines.append(f"broker      {broker['endpoint']}  (not titanic's: no mmi.broker)")
        else:
            lines.append(f"broker      {broker['endpoint']}  titanic {broker['version']}  up "
                         f"{_age(broker['uptime_s'])}  {broker['workers']} worker(s)")
    lines.extend(f"dispatcher  {answered['host']} pid {answered['pid']}  titanic "
                 f"{answered['version']}  up {_age(answered['uptime_s'])}"
                 for answered in view["dispatchers"])
    lines.extend(_site_lines(view.get("sites")))
    lines.append("")
    header = (f"{'SERVICE':24} {'PENDING':>8} {'SCHEDULED':>9} {'IN FLIGHT':>9} {'DONE':>8} "
              f"{'FAILED':>7} {'EXPIRED':>7} {'CANCELLED':>9} {'OLDEST':>7} {'WORKERS':>7} "
              f"{'DONE/S':>7}")
    lines.append(header)
    for row in view["services"]:
        workers = "-" if row["workers"] is None else str(row["workers"])
        lines.append(f"{row['service'][:24]:24} {row['pending']:>8} "
                     f"{row.get('scheduled', '-'):>9} {row['dispatched']:>9} "
                     f"{row['done']:>8} {row['failed']:>7} {row['expired']:>7} "
                     f"{row.get('cancelled', '-'):>9} "
                     f"{_age(row['oldest_pending_age_s']):>7} {workers:>7} "
                     f"{row['completed_per_s']:>7.2f}")
    limited = [row for row in view["services"]
               if row.get("max_in_flight") is not None or row.get("rate_per_s") is not None]
    for row in limited:
        parts = ([f"at most {row['max_in_flight']} in flight"]
                 if row.get("max_in_flight") is not None else [])
        parts += [f"{row['rate_per_s']:g}/s"] if row.get("rate_per_s") is not None else []
        lines.append(f"limit of {row['service']}: {', '.join(parts)}")
    if not view["services"]:
        lines.append("(no services)")
    return "\n".join(lines)


@click.command()
@broker_option
@client_options
@curve_client_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=None,
              help="Refresh every S seconds, in place, until Ctrl-C.")
@click.option("--window", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds over which completions per second are counted.")
@handle_errors
def info(broker: tuple[str, ...], timeout: float, retries: int, curve: CurveOptions, as_json: bool,
         interval: float | None, window: float) -> None:
    """Show the queue per service, and the broker and dispatcher that answer.

    Per service: requests pending, scheduled (waiting for their time), in flight, done, failed
    and expired, the age of the oldest pending one, live workers, and completions per second.
    Asks the broker (mmi.broker) and a dispatcher (titanic.manage): no database access needed.

    \b
    Example:
      titanic info
      titanic info --interval 2
      titanic info --json | jq '.services[] | select(.failed > 0)'
    """
    with management(broker, timeout, retries, curve) as client:
        while True:
            view = client.info(window)
            text = json.dumps(view, indent=2) if as_json else render_info(view)
            if interval is None:
                click.echo(text)
                return
            click.clear()
            click.echo(text)
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return


def bulk_retry(broker: tuple[str, ...], timeout: float, retries: int, curve: CurveOptions,
               state: str, service: str | None, dry_run: bool) -> None:
    """`titanic retry --state ...`: every failed (or expired) request pending again."""
    with management(broker, timeout, retries, curve) as client:
        count = client.retry(state=state, service=service, dry_run=dry_run)
    scope = f" of {shown(service)}" if service else ""
    click.echo(f"{'would retry' if dry_run else 'retried'} {count} {state} request(s){scope}")


@click.command()
@broker_option
@client_options
@curve_client_options
@click.option("--state", type=click.Choice(["done", "failed", "expired", "cancelled"]),
              required=True,
              help="Delete requests in this finished state.")
@click.option("--older-than", "older_than", metavar="DURATION", required=True,
              callback=_duration,
              help="Only those finished longer ago than this: 90s, 15m, 12h, 1d, 2w.")
@click.option("--service", default=None, help="Only this service.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@handle_errors
def purge(broker: tuple[str, ...], timeout: float, retries: int, curve: CurveOptions, state: str,
          older_than: float, service: str | None, dry_run: bool) -> None:
    """Delete finished requests (and their replies) in bulk; prints how many.

    \b
    Example:
      titanic purge --state done --older-than 1d
      titanic purge --state failed --older-than 2w --service resize --dry-run
    """
    with management(broker, timeout, retries, curve) as client:
        count = client.purge(state=state, older_than=older_than, service=service,
                             dry_run=dry_run)
    scope = f" of {shown(service)}" if service else ""
    click.echo(f"{'would purge' if dry_run else 'purged'} {count} {state} request(s){scope}")


COMMANDS: list[click.Command] = [info, purge]
