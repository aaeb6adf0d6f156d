"""Prometheus metrics and a health check for the broker and the dispatcher, served over HTTP.

The daemons keep their counters as plain integers in their own loop (BrokerStats,
DispatcherStats); the collectors here read them when Prometheus scrapes, so serving metrics
costs the loops nothing but the two latency histograms the dispatcher feeds. prometheus_client
renders the exposition format; its WSGI app runs in a thread of stdlib's WSGI server, beside a
`/healthz` that answers 200 only while the daemon serves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from titanic.errors import StoreError
from titanic.ops._http import QuietHandler, bind_error
from titanic.store import SCHEDULED
from titanic.store.types import RequestStatus

if TYPE_CHECKING:
    from titanic.broker.server import Broker
    from titanic.dispatch.standalone import DispatcherBase

log = logging.getLogger("titanic.metrics")

#: A health check: (serving, a line saying why or why not).
HealthCheck = Callable[[], tuple[bool, str]]

#: Buckets for store and acknowledgement latency, seconds: 0.1 ms to 5 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0)


def parse_bind(bind: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) as a host and a port; ValueError if it is not one."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not HOST:PORT: {bind!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _counters(prefix: str, stats: object, doc: str) -> Iterator[Metric]:
    """Every int field of a stats dataclass as a counter `<prefix>_<field>_total`."""
    for field in fields(stats):  # type: ignore[arg-type]
        value = getattr(stats, field.name)
        if isinstance(value, int):
            yield CounterMetricFamily(f"{prefix}_{field.name}", f"{doc}: {field.name}",
                                      value=value)


class BrokerCollector(Collector):
    """The broker's counters, its workers and queued requests per service, and its uptime."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def collect(self) -> Iterable[Metric]:
        """Read the broker's counters now."""
        yield from _counters("titanic_broker", self._broker.stats, "broker count")
        workers = GaugeMetricFamily("titanic_broker_workers", "live workers per service",
                                    labels=["service"])
        queued = GaugeMetricFamily("titanic_broker_queue_depth",
                                   "requests waiting in the broker for a worker, per service",
                                   labels=["service"])
        for service, (live, waiting) in self._broker.service_counts().items():
            workers.add_metric([service], live)
            queued.add_metric([service], waiting)
        yield workers
        yield queued
        yield GaugeMetricFamily("titanic_broker_uptime_seconds", "seconds since the broker started",
                                value=time.time() - self._broker.started)


class DispatcherCollector(Collector):
    """The dispatcher's counters, and the stored requests by service and state."""

    def __init__(self, dispatcher: DispatcherBase) -> None:
        self._dispatcher = dispatcher

    def collect(self) -> Iterable[Metric]:
        """Read the counters and ask the store for its counts now."""
        dispatcher = self._dispatcher
        yield from _counters("titanic_dispatcher", dispatcher.stats, "dispatcher count")
        yield GaugeMetricFamily("titanic_dispatcher_uptime_seconds",
                                "seconds since the dispatcher started",
                                value=time.time() - dispatcher.started)
        in_flight = GaugeMetricFamily("titanic_dispatcher_in_flight",
                                      "requests forwarded and awaiting their reply, per service",
                                      labels=["service"])
        window = GaugeMetricFamily("titanic_dispatcher_window",
                                   "requests a service may have in flight now (its adaptive "
                                   "window)", labels=["service"])
        for service, (count, limit) in dispatcher.forwarding().items():
            in_flight.add_metric([service], count)
            window.add_metric([service], limit)
        yield in_flight
        yield window
        now = datetime.now(UTC)
        try:
            summaries = dispatcher.store.summary(since=now)
        except StoreError as exc:
            log.warning("metrics: no request counts: %s", exc)
            return
        by_state = GaugeMetricFamily("titanic_requests", "stored requests by service and state",
                                     labels=["service", "state"])
        oldest = GaugeMetricFamily("titanic_oldest_pending_age_seconds",
                                   "age of the oldest pending request, per service",
                                   labels=["service"])
        for summary in summaries:
            for state, count in sorted(summary.shown_counts().items()):
                if count or state in summary.counts or state == SCHEDULED:
                    by_state.add_metric([summary.service, state], count)
            if summary.oldest_pending is not None:
                age = (now - summary.oldest_pending).total_seconds()
                oldest.add_metric([summary.service], max(0.0, age))
        yield by_state
        yield oldest
        yield from _peer_metrics(dispatcher, {
            summary.service: summary.counts.get(RequestStatus.PENDING, 0)
            for summary in summaries})


def _peer_metrics(dispatcher: DispatcherBase, waiting: dict[str, int]) -> Iterable[Metric]:
    """Each peer's link (up, since when), services, requests waiting for it, in flight there,
    forwarded and answered."""
    sites = dispatcher.peers.describe(waiting)
    if not sites["peers"]:
        return
    up = GaugeMetricFamily("titanic_peer_up", "1 while the link to the peer is up",
                           labels=["peer"])
    since = GaugeMetricFamily("titanic_peer_link_changed_timestamp_seconds",
                              "when the peer's link last went up or down (epoch seconds)",
                              labels=["peer"])
    workers = GaugeMetricFamily("titanic_peer_service_workers",
                                "live workers per service at the peer, as it said last",
                                labels=["peer", "service"])
    gauges = {field: GaugeMetricFamily(f"titanic_peer_{field}", text, labels=["peer"])
              for field, text in (("waiting", "requests pending here for the peer's services"),
                                  ("in_flight", "requests sent to the peer awaiting the reply"))}
    counters = {field: CounterMetricFamily(f"titanic_peer_{field}", text, labels=["peer"])
                for field, text in (("forwarded", "requests the peer acknowledged"),
                                    ("answered", "replies fetched back from the peer"))}
    for peer in sites["peers"]:
        name = peer["name"]
        up.add_metric([name], 1 if peer["up"] else 0)
        since.add_metric([name], peer["since"] or 0)
        for service, counts in peer["services"].items():
            workers.add_metric([name, service], counts["workers"])
        for field, family in gauges.items():
            family.add_metric([name], peer[field])
        for field, counter in counters.items():
            counter.add_metric([name], peer[field])
    yield from (up, since, workers, *gauges.values(), *counters.values())


def broker_registry(broker: Broker) -> CollectorRegistry:
    """A registry of the broker's metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BrokerCollector(broker))
    return registry


def dispatcher_registry(dispatcher: DispatcherBase,
                        registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """A registry of the dispatcher's metrics (or `registry` with them added); its latency
    histograms are fed from now on."""
    registry = registry or CollectorRegistry(auto_describe=True)
    registry.register(DispatcherCollector(dispatcher))
    store = Histogram("titanic_dispatcher_store_seconds",
                      "time of each store exchange (new requests, replies and claims in one "
                      "transaction)", buckets=LATENCY_BUCKETS, registry=registry)
    ack = Histogram("titanic_dispatcher_ack_seconds",
                    "time from reading a titanic.request to sending its acknowledgement",
                    buckets=LATENCY_BUCKETS, registry=registry)
    dispatcher.observe_store = store.observe
    dispatcher.observe_ack = ack.observe
    return registry


class MetricsServer:
    """Serves `/metrics` (and `/`) from a registry and `/healthz` from a check, in a thread.

    One thread answers every request in turn: scrapes are few, and the store keeps its
    connections per thread (a thread per request would open a connection per scrape)."""

    def __init__(self, bind: str, registry: CollectorRegistry, health: HealthCheck) -> None:
        self._metrics = make_wsgi_app(registry)
        self._health = health
        host, port = parse_bind(bind)
        self._host = host
        try:
            self._server: WSGIServer = make_server(host, port, self._app, WSGIServer,
                                                   handler_class=QuietHandler)
        except OSError as exc:
            raise bind_error(bind, "metrics", exc) from exc
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="titanic-metrics")

    def _app(self, environ: dict[str, Any],
             start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            try:
                serving, why = self._health()
            except Exception as exc:  # noqa: BLE001 - a failing check says so; the server goes on
                serving, why = False, f"health check failed: {exc}"
            start_response("200 OK" if serving else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [why.encode() + b"\n"]
        result: Iterable[bytes] = self._metrics(environ, start_response)
        return result

    def start(self) -> MetricsServer:
        """Serve in a background thread; returns self."""
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz",
                 self._host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()


def broker_metrics(bind: str, broker: Broker,
                   host: DispatcherBase | None = None) -> MetricsServer:
    """The broker's metrics and health on HOST:PORT, bound (BindError if it cannot be) and
    served once started; with the dispatcher it hosts (`host`), its metrics too, and healthy
    only while both serve."""
    if host is None:
        return MetricsServer(bind, broker_registry(broker), broker.health)

    def health() -> tuple[bool, str]:
        checks = (broker.health(), host.health())
        return all(ok for ok, _ in checks), "; ".join(why for _, why in checks)

    return MetricsServer(bind, dispatcher_registry(host, broker_registry(broker)), health)


def serve_broker_metrics(bind: str, broker: Broker,
                         host: DispatcherBase | None = None) -> MetricsServer:
    """Serve `broker_metrics` from now until `stop()`."""
    return broker_metrics(bind, broker, host).start()


def serve_dispatcher_metrics(bind: str, dispatcher: DispatcherBase) -> MetricsServer:
    """Serve the dispatcher's metrics and health on HOST:PORT, from now until `stop()`."""
    return MetricsServer(bind, dispatcher_registry(dispatcher), dispatcher.health).start()
