"""`titanic bench`: measure the broker and Titanic on loopback, optionally against peers."""

from __future__ import annotations

import click

from titanic.bench import curve as curve_bench
from titanic.bench import ha as ha_bench
from titanic.bench.suite import BenchOptions, format_rows, run_mdp, run_titanic
from titanic.settings import broker_list
from titanic_cli.options import UsageProblem, handle_errors


@click.command()
@click.option("--broker", default=None, envvar="TITANIC_BENCH_BROKER",
              help="Measure a running broker (and dispatcher) instead of starting them.")
@click.option("--requests", "-n", type=click.IntRange(min=100), default=20_000,
              show_default=True, help="Requests per pipelined load.")
@click.option("--sync-requests", type=click.IntRange(min=10), default=3_000, show_default=True,
              help="Requests per synchronous load.")
@click.option("--size", type=click.IntRange(min=0), default=100, show_default=True,
              help="Body bytes.")
@click.option("--depth", type=click.IntRange(min=1), default=32, show_default=True,
              help="Requests in flight for the pipelined MDP load.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Echo workers started.")
@click.option("--compare", is_flag=True,
              help="Also run the MDP loads through majortomo's broker and a bare zmq.proxy "
              "device, and print our rates as ratios of theirs.")
@click.option("--mdp-only", is_flag=True, help="Skip the titanic.request figures.")
@click.option("--freelance", "freelance", default=None, metavar="EP1,EP2,...",
              help="Measure the brokerless rows against these running freelance echo servers "
              "(`titanic worker echo --bind`, another machine's for remote figures) instead of "
              "starting them on loopback; with --broker and without it, no brokerless rows.")
@click.option("--ha", is_flag=True,
              help="Measure high availability's cost instead: end to end through two brokers "
              "and two dispatchers on --db, beside one broker and one dispatcher.")
@click.option("--db", "db_url", default=None, metavar="URL",
              help="With --ha: the database the dispatchers share (PostgreSQL for the "
              "production picture); requests for 'echo' are added to it.")
@click.option("--curve", is_flag=True,
              help="Measure CURVE's cost instead: the MDP loads through a broker in plaintext and "
              "with CURVE, taking turns, side by side (also: python -m titanic.bench.curve).")
@handle_errors
def bench(broker: str | None, requests: int, sync_requests: int, size: int, depth: int,
          workers: int, compare: bool, mdp_only: bool, freelance: str | None, ha: bool,
          db_url: str | None, curve: bool) -> None:
    """Measure round trips, acknowledgements and completions per second, with latencies.

    Starts what it needs on 127.0.0.1 (a broker, echo workers, freelance echo servers for the
    brokerless rows, a dispatcher on a throw-away SQLite file) unless --broker (--freelance)
    names running ones. Progress goes to stderr, the table to
    stdout.

    \b
    Example:
      titanic bench --compare
      titanic bench --curve
      titanic bench --ha --db postgresql+psycopg://postgres@127.0.0.1/bench
    """
    if ha:
        if db_url is None or broker is not None or compare or curve:
            raise UsageProblem("--ha needs --db and starts its own brokers: not with --broker, "
                               "--compare or --curve")
        _bench_ha(db_url, requests, size, depth, workers)
        return
    if db_url is not None:
        raise UsageProblem("--db is for --ha")
    if curve:
        if broker is not None or compare:
            raise UsageProblem("--curve starts its own brokers: not with --broker or --compare")
        best = curve_bench.run(curve_bench.CurveBenchOptions(
            requests=requests, sync_requests=sync_requests, size=size, depth=depth,
            workers=workers))
        click.echo(f"{size}-byte bodies, {workers} echo workers, loopback tcp, best of "
                   f"{curve_bench.CurveBenchOptions().rounds} alternating rounds")
        click.echo(curve_bench.format_comparison(best))
        return
    options = BenchOptions(requests=requests, sync_requests=sync_requests, size=size,
                           depth=depth, workers=workers, broker=broker, compare=compare,
                           titanic=not mdp_only,
                           freelance=tuple(broker_list(freelance)) if freelance else ())
    rows = run_mdp(options)
    if options.titanic:
        rows += run_titanic(options)
    click.echo(f"{size}-byte bodies, {workers} echo workers, {depth} in flight for pipelined MDP")
    click.echo(format_rows(rows))



def _bench_ha(db_url: str, requests: int, size: int, depth: int, workers: int) -> None:
    rows = ha_bench.run(db_url, requests=requests // 2, body=b"x" * size, depth=depth,
                        workers=workers)
    click.echo(f"{size}-byte bodies, {workers} echo workers on every broker, clients given "
               f"every broker, database {ha_bench.describe(db_url)}")
    click.echo(format_rows(rows))
