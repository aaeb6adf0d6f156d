"""Interoperability with majortomo (PyPI): its peers through our broker, ours under its broker."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from titanic_support import Processes, free_endpoint, running, wait_until

from titanic.broker import Broker
from titanic.client import Client
from titanic.errors import TitanicTimeoutError
from titanic.protocol.mdp import Dialect
from titanic.settings import BrokerSettings
from titanic.worker import Worker

majortomo = pytest.importorskip("majortomo")


@pytest.fixture
def our_broker() -> Iterator[str]:
    broker = Broker("tcp://127.0.0.1:0", BrokerSettings(heartbeat_interval=0.2))
    endpoint = broker.bind()[0]
    with running(broker):
        yield endpoint


@pytest.fixture
def their_broker(tmp_path: Path) -> Iterator[str]:
    endpoint = free_endpoint()
    procs = Processes(tmp_path)
    try:
        procs.start("majortomo", [sys.executable, "-P", "-m", "majortomo.broker", "-b", endpoint])
        yield endpoint
    finally:
        procs.close()


def serve_with_majortomo_worker(endpoint: str, service: bytes, stop: threading.Event) -> None:
    worker = majortomo.Worker(endpoint, service, heartbeat_interval=0.2)
    worker.connect()
    try:
        while not stop.is_set():
            try:
                client, frames = worker.wait_for_request()
            except Exception:  # noqa: BLE001 - majortomo raises when closed under it
                return
            worker.send_reply_final(client, [b"mt:" + frames[0], *frames[1:]])
    finally:
        worker.close()


def test_majortomo_client_and_worker_through_our_broker(our_broker: str) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=serve_with_majortomo_worker,
                              args=(our_broker, b"mt-echo", stop), daemon=True)
    thread.start()
    try:
        with majortomo.Client(our_broker) as client:
            def answer() -> list[bytes] | None:
                client.send(b"mt-echo", b"hello", b"")
                try:
                    return client.recv_all_as_list(timeout=1.0)
                except Exception:  # noqa: BLE001 - majortomo's own timeout error, unexported
                    client.connect(reconnect=True)
                    return None
            reply: list[list[bytes] | None] = []
            wait_until(lambda: reply.append(answer()) or reply[-1] is not None, timeout=15)
            assert reply[-1] == [b"mt:hello", b""]
        # and our own 7/MDP client reaches the majortomo worker through our broker
        with Client(our_broker, timeout=3) as ours:
            assert ours.request("mt-echo", b"x") == [b"mt:x"]
    finally:
        stop.set()
        thread.join(5)


def test_our_worker_and_client_under_majortomos_broker(their_broker: str) -> None:
    worker = Worker(their_broker, "ours", lambda f: [b"ours:" + f[0]],
                    dialect=Dialect.MAJORTOMO, heartbeat_interval=0.5)
    with running(worker), Client(their_broker, dialect=Dialect.MAJORTOMO, timeout=1.0,
                                 retries=0) as client:
        def served() -> bool:
            try:
                return client.request("ours", b"ping") == [b"ours:ping"]
            except TitanicTimeoutError:
                return False
        wait_until(served, timeout=20, message="served through majortomo's broker")
        assert client.request("ours", b"again") == [b"ours:again"]

