"""Prometheus metrics and /healthz of a real broker and dispatcher, scraped over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from titanic_support import FAST_CONNECTION, running, wait_until

from titanic.broker import Broker
from titanic.client import Client
from titanic.client.tsp import TitanicClient
from titanic.dispatch.in_flight import START
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.ops.metrics import MetricsServer, broker_registry, dispatcher_registry
from titanic.settings import BrokerSettings
from titanic.store import Store
from titanic.worker import Worker, echo_handler


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def health(port: int) -> tuple[int, str]:
    """The /healthz status code and text."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    return sqlite_store


def test_broker_metrics_count_workers_and_requests_and_health_follows_the_loop(
        stack: ExitStack) -> None:
    broker = Broker("tcp://127.0.0.1:0", BrokerSettings(heartbeat_interval=0.1))
    endpoint = broker.bind()[0]
    metrics = MetricsServer("127.0.0.1:0", broker_registry(broker), broker.health).start()
    stack.callback(metrics.stop)
    assert health(metrics.port)[0] == 503  # bound but not serving yet
    with running(broker):
        stack.enter_context(running(Worker(endpoint, "echo", echo_handler,
                                           heartbeat_interval=0.1)))
        wait_until(lambda: scrape(metrics.port).get(
            ("titanic_broker_workers", (("service", "echo"),))) == 1, message="worker counted")
        with Client(endpoint) as client:
            assert client.request(b"echo", b"hi") == [b"hi"]
        samples = scrape(metrics.port)
        assert samples[("titanic_broker_requests_total", ())] == 1
        assert samples[("titanic_broker_replies_total", ())] == 1
        assert samples[("titanic_broker_malformed_total", ())] == 0
        code, text = health(metrics.port)
        assert code == 200 and "serving" in text
    assert health(metrics.port)[0] == 503


def test_dispatcher_metrics_show_requests_by_state_and_latency_histograms(
        stack: ExitStack, store: Store) -> None:
    broker = Broker("tcp://127.0.0.1:0", BrokerSettings(heartbeat_interval=0.1,
                                                        heartbeat_liveness=5))
    endpoint = broker.bind()[0]
    broker_thread = stack.enter_context(ExitStack())
    broker_thread.enter_context(running(broker))
    dispatcher = Dispatcher(store, DispatcherSettings(broker=endpoint, connection=FAST_CONNECTION))
    metrics = MetricsServer("127.0.0.1:0", dispatcher_registry(dispatcher),
                            dispatcher.health).start()
    stack.callback(metrics.stop)
    stack.enter_context(running(dispatcher))
    wait_until(lambda: health(metrics.port)[0] == 200, message="dispatcher healthy")
    with TitanicClient(endpoint, timeout=2.0, retries=3) as client:
        client.submit("nobody", b"x")
        client.submit("nobody", b"y")
        client.submit("nobody", b"later", not_before=timedelta(hours=1))
        client.cancel(client.submit("nobody", b"never"))
    # Observed just after the acknowledgement is sent: the client may see it first.
    wait_until(lambda: scrape(metrics.port)[("titanic_dispatcher_ack_seconds_count", ())] == 4,
               message="four acknowledgements observed")
    samples = scrape(metrics.port)
    assert samples[("titanic_requests", (("service", "nobody"), ("state", "pending")))] == 2
    assert samples[("titanic_requests", (("service", "nobody"), ("state", "scheduled")))] == 1
    assert samples[("titanic_requests", (("service", "nobody"), ("state", "cancelled")))] == 1
    assert samples[("titanic_oldest_pending_age_seconds", (("service", "nobody"),))] >= 0
    assert samples[("titanic_dispatcher_store_seconds_count", ())] >= 1
    assert samples[("titanic_dispatcher_store_errors_total", ())] == 0
    # Forwarding, per service: nothing in flight once the reply is stored, and a window one
    # wider than it started (a reply came back in time).
    broker_thread.enter_context(running(Worker(endpoint, "echo", echo_handler,
                                               heartbeat_interval=0.1)))
    with TitanicClient(endpoint, timeout=2.0, retries=3) as client:
        assert client.wait(client.submit("echo", b"z"), timeout=10).reply == [b"z"]
    wait_until(lambda: scrape(metrics.port).get(
        ("titanic_dispatcher_window", (("service", "echo"),))) == START + 1,
        message="the window widened by the reply")
    assert scrape(metrics.port)[("titanic_dispatcher_in_flight", (("service", "echo"),))] == 0
    assert dispatcher.describe()["forwarding"]["echo"] == {"in_flight": 0, "window": START + 1}
    broker_thread.close()  # the broker stops: the dispatcher's connections fall silent
    wait_until(lambda: health(metrics.port)[0] == 503, timeout=10,
               message="dispatcher unhealthy without a broker")
    assert "no live broker connection" in health(metrics.port)[1]
