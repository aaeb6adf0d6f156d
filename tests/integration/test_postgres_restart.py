"""PostgreSQL restarted under a stream of writes: the pool reconnects, nothing is lost. The
server is the test's own (tests/pg_cluster.py), not the one other tests use."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pg_cluster import Server, single_server
from titanic_support import wait_until

from titanic.errors import StoreError
from titanic.store import open_store

pytestmark = pytest.mark.postgres


def test_writes_survive_a_server_restart(postgres_bindir: Path) -> None:
    with single_server(postgres_bindir) as server:
        _writes_survive_a_restart(server)


def _writes_survive_a_restart(server: Server) -> None:
    store = open_store(server.url())
    acknowledged: list[tuple[str, bytes]] = []
    errors: list[StoreError] = []
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            body = str(n).encode()
            try:
                acknowledged.append((store.submit("svc", [body]), body))
            except StoreError as exc:  # allowed only if the server stayed away too long
                errors.append(exc)
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(acknowledged) > 200, timeout=30, message="writes before restart")
        before = len(acknowledged)
        server.restart()
        wait_until(lambda: len(acknowledged) > before + 200, timeout=60,
                   message="writes after restart")
    finally:
        stop.set()
        writer.join(60)
    assert errors == [], f"store calls failed across the restart: {errors[:1]}"
    for request_id, body in acknowledged:
        stored = store.get(request_id)
        assert stored is not None and stored.request == (body,)
    store.close_store()
