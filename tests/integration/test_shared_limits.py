"""Limits that hold across brokers: two brokers, each hosting a dispatcher, on one database
(PostgreSQL, and SQLite), workers at each recording when each request runs; the service's
limit, kept in the store, holds for both together."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import pytest
from titanic_support import fast_dispatcher, running, start_broker, wait_until

from titanic.client.tsp import TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.protocol.mdp import Frames
from titanic.store import open_store
from titanic.worker import Worker

DATABASES = [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"]
WORKERS_PER_BROKER = 3
#: How long each request keeps its worker busy: long enough for runs to overlap.
WORK_S = 0.05


class Runs:
    """Every worker's handler: notes when each request started and how many ran at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.starts: list[float] = []

    def __call__(self, frames: Frames) -> Frames:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.starts.append(time.monotonic())
        time.sleep(WORK_S)  # the request's work, during which others may start
        with self._lock:
            self.running -= 1
        return [b"ok"]


def _two_brokers(request: pytest.FixtureRequest, stack: ExitStack, database: str,
                 runs: Runs, **limit: float) -> list[str]:
    """The service limited in a database, then two brokers hosting dispatchers on it,
    WORKERS_PER_BROKER workers at each: their endpoints."""
    url = str(request.getfixturevalue("sqlite_url" if database == "sqlite"
                                      else "postgres_url"))
    limits = open_store(url)
    stack.callback(limits.close_store)
    limits.set_limit("limited", **limit)  # type: ignore[arg-type]
    endpoints = []
    for _ in range(2):
        store = open_store(url)
        stack.callback(store.close_store)
        endpoint = start_broker(stack, host=HostedDispatcher(store, fast_dispatcher())).bound[0]
        endpoints.append(endpoint)
        for _ in range(WORKERS_PER_BROKER):
            stack.enter_context(running(Worker(endpoint, "limited", runs,
                                               heartbeat_interval=0.1)))
    return endpoints


def _submit(stack: ExitStack, endpoints: list[str], count: int) -> list[tuple[TitanicClient,
                                                                               str]]:
    clients = [stack.enter_context(TitanicClient(endpoint, timeout=2.0, retries=3))
               for endpoint in endpoints]
    return [(clients[n % 2], clients[n % 2].submit("limited", b"%d" % n)) for n in range(count)]


@pytest.mark.parametrize("database", DATABASES)
def test_max_in_flight_holds_across_two_brokers(request: pytest.FixtureRequest,
                                                database: str) -> None:
    runs = Runs()
    with ExitStack() as stack:
        endpoints = _two_brokers(request, stack, database, runs, max_in_flight=2)
        submitted = _submit(stack, endpoints, 24)
        wait_until(lambda: len(runs.starts) == 24, timeout=30, message="every request run")
        for client, request_id in submitted:
            assert client.wait(request_id, 10).reply == [b"ok"]
    assert runs.most <= 2
    assert len(runs.starts) == 24  # each ran once


@pytest.mark.parametrize("database", DATABASES)
def test_a_rate_holds_across_two_brokers(request: pytest.FixtureRequest, database: str) -> None:
    runs = Runs()
    with ExitStack() as stack:
        endpoints = _two_brokers(request, stack, database, runs, rate=20.0)
        _submit(stack, endpoints, 60)
        wait_until(lambda: len(runs.starts) == 60, timeout=30, message="every request run")
    # 60 requests at 20 a second, one token at a time: the first at once, the last 59
    # tokens later (a lower bound of correctness, not a speed target).
    assert max(runs.starts) - min(runs.starts) >= 2.9
