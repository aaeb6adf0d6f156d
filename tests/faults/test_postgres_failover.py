"""PostgreSQL failover on PostgreSQL's own replication, under load.

A primary and a synchronous standby (pg_basebackup, synchronous_standby_names) on free ports,
two dispatchers on a multi-host URL (target_session_attrs=read-write), a worker and submitting
clients. The primary is killed with SIGKILL and the standby promoted: every acknowledged request
completes on the new primary, none is lost. The clusters are made and removed by the test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from ha_support import COUNTING_WORKER, Load, lost_requests, wait_all_finished
from pg_cluster import primary_and_standby
from titanic_support import Processes, free_endpoint, run_cli, wait_until

from titanic.store import open_store

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LOAD_SECONDS = 3.0


def test_acknowledged_requests_survive_a_primary_killed_and_a_standby_promoted(
        procs: Processes, tmp_path: Path, postgres_bindir: Path) -> None:
    with primary_and_standby(postgres_bindir) as pair:
        url = pair.url()
        broker = free_endpoint()
        procs.broker(broker)
        for n in range(2):
            procs.cli(f"dispatcher{n}", "dispatcher", "--broker", broker, "--db", url,
                      "--heartbeat", "0.2", "--request-timeout", "3", "--backoff", "0.2",
                      "--backoff-max", "1", "--max-attempts", "20")
        worker_script = tmp_path / "worker.py"
        worker_script.write_text(COUNTING_WORKER)
        procs.start("worker", [sys.executable, str(worker_script), broker,
                               str(tmp_path / "executions.log")])
        with Load([broker], threads=4, timeout=2.0) as load:
            wait_until(lambda: len(load.acknowledged) > 100, timeout=60, message="load running")
            time.sleep(LOAD_SECONDS)
            killed = time.monotonic()
            before = len(load.acknowledged)
            pair.kill_primary()
            pair.promote()
            promoted = time.monotonic()
            wait_until(lambda: len(load.acknowledged) > before + 100, timeout=60,
                       message="acknowledgements on the new primary")
            time.sleep(LOAD_SECONDS)
        acknowledged = dict(load.acknowledged)
        store = open_store(url, migrate=False)
        try:
            wait_all_finished(store, timeout=90)
            lost = lost_requests(store, acknowledged)
        finally:
            store.close_store()
        status = run_cli("list", "--db", url, "--limit", "1")
        print(f"acknowledged {len(acknowledged)} ({before} before the kill), lost {len(lost)}; "
              f"promotion took {promoted - killed:.2f} s; longest client stall after the kill: "
              f"{load.longest_stall(killed, time.monotonic()):.2f} s")
        assert status.returncode == 0, status.stderr  # the commands read through the list too
        assert lost == [], f"lost {len(lost)} acknowledged requests, e.g. {lost[:3]}"
