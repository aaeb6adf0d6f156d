"""What high availability costs: the end-to-end load through one broker and one dispatcher, and
through two brokers and two dispatchers sharing the store, workers registered with both.

Every row sends keyed titanic.requests (as TitanicClient does); one row without keys, through one
broker and one dispatcher, shows what the key itself costs. The database (PostgreSQL for the
production picture) is given; its schema is brought up to date first, and requests left over from
an earlier load are finished before each is timed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url

from titanic.bench.common import free_port, spawn, stop_all, titanic_command
from titanic.bench.suite import Report, Row, print_row
from titanic.bench.tsp import measure_acks_pipelined, measure_end_to_end, wait_for_titanic
from titanic.store import open_store

#: (row label, brokers, dispatchers, keyed)
SETUPS = [
    ("1 broker + 1 dispatcher", 1, 1, False),
    ("1 broker + 1 dispatcher", 1, 1, True),
    ("2 brokers + 2 dispatchers", 2, 2, True),
]


@contextmanager
def running_network(db_url: str, brokers: int, dispatchers: int,
                    workers: int) -> Iterator[list[str]]:
    """Brokers, dispatchers on every broker and echo workers on every broker; the endpoints."""
    endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(brokers)]
    every = ",".join(endpoints)
    processes = [spawn(titanic_command("broker", "--bind", endpoint)) for endpoint in endpoints]
    try:
        processes += [spawn(titanic_command("dispatcher", "--broker", every, "--db", db_url))
                      for _ in range(dispatchers)]
        processes += [spawn(titanic_command("worker", "echo", "--broker", every))
                      for _ in range(workers)]
        for endpoint in endpoints:
            wait_for_titanic(endpoint)
        yield endpoints
    finally:
        stop_all(processes)


def run(db_url: str, *, requests: int, body: bytes, depth: int, workers: int,
        report: Report = print_row) -> list[Row]:
    """Acknowledgements (64 in flight) and end-to-end completions (`depth` in flight) for each
    setup, clients given every broker; the two-broker rows carry their ratio to the one-broker
    rows of the same load."""
    open_store(db_url).close_store()  # the schema first, or the dispatchers race to make it
    rows: list[Row] = []
    for label, brokers, dispatchers, keyed in SETUPS:
        with running_network(db_url, brokers, dispatchers, workers) as endpoints:
            for result in (
                    measure_acks_pipelined(endpoints, requests, body, 64, keyed=keyed)[0],
                    measure_end_to_end(endpoints, db_url, requests, body, depth, keyed=keyed)):
                rows.append(Row("ha", label, result))
                report(rows[-1])
    single = {row.result.name: row.result.rate for row in rows if row.target == SETUPS[0][0]}
    for row in rows:
        if row.target != SETUPS[0][0] and single.get(row.result.name):
            row.ratios[SETUPS[0][0]] = row.result.rate / single[row.result.name]
    return rows


def describe(db_url: str) -> str:
    """The database URL without its password."""
    return make_url(db_url).render_as_string(hide_password=True)

