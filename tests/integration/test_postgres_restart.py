"""PostgreSQL restarted under a stream of writes: the pool reconnects, nothing is lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from titanic_support import wait_until

from titanic.errors import StoreError
from titanic.store import open_store

pytestmark = pytest.mark.postgres


def _restart_command() -> list[str]:
    clusters = sorted(p.name for p in Path("/etc/postgresql").glob("*")) if Path(
        "/etc/postgresql").exists() else []
    if not clusters or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs pg_ctlcluster and root")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1], "main", "restart"]


def test_writes_survive_a_server_restart(postgres_url: str) -> None:
    command = _restart_command()
    store = open_store(postgres_url)
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
        subprocess.run(command, check=True, timeout=60, capture_output=True)
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
