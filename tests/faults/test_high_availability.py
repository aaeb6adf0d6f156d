"""Two brokers, two dispatchers on PostgreSQL, two workers on both brokers, clients given both.

Under continuous load one broker is killed with SIGKILL and not restarted, then one dispatcher.
The clients run with the default timeout and retries. Afterwards: every acknowledged request has
its correct reply (lost = 0), no body is stored twice (submits cut by the broker's death were
resent with their key through the other broker), and requests executed more than once are at
most those in flight at each kill. The longest stall a client saw across each kill is printed (a
measurement, not an assertion).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from ha_support import (
    COUNTING_WORKER,
    Load,
    executions,
    lost_requests,
    stored_bodies,
    wait_all_finished,
)
from titanic_support import Processes, free_endpoint, wait_until

from titanic.store import open_store

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

IN_FLIGHT_PER_SERVICE = 8
DISPATCHERS = 2
LOAD_SECONDS = 3.0


def test_losing_a_broker_and_a_dispatcher_loses_nothing_and_stores_nothing_twice(
        procs: Processes, tmp_path: Path, postgres_url: str) -> None:
    brokers = [free_endpoint(), free_endpoint()]
    both = ",".join(brokers)
    broker_procs = [procs.broker(endpoint, name=f"broker{n}")
                    for n, endpoint in enumerate(brokers)]
    dispatcher_args = ["dispatcher", "--broker", both, "--db", postgres_url,
                       "--heartbeat", "0.2", "--request-timeout", "3", "--backoff", "0.2",
                       "--backoff-max", "1", "--max-attempts", "20",
                       "--max-in-flight-per-service", str(IN_FLIGHT_PER_SERVICE)]
    dispatchers = [procs.cli(f"dispatcher{n}", *dispatcher_args) for n in range(DISPATCHERS)]
    worker_script = tmp_path / "worker.py"
    worker_script.write_text(COUNTING_WORKER)
    executed = tmp_path / "executions"
    executed.mkdir()
    for n in range(2):
        procs.start(f"worker{n}", [sys.executable, str(worker_script), both,
                                   str(executed / f"w{n}.log")])
    kills: dict[str, float] = {}
    with Load(brokers, threads=4) as load:
        wait_until(lambda: len(load.acknowledged) > 100, timeout=60, message="load running")
        time.sleep(LOAD_SECONDS)
        kills["broker"] = _kill(broker_procs[0])
        time.sleep(LOAD_SECONDS)
        kills["dispatcher"] = _kill(dispatchers[0])
        time.sleep(LOAD_SECONDS)
    acknowledged = dict(load.acknowledged)
    store = open_store(postgres_url, migrate=False)
    try:
        wait_all_finished(store, timeout=90)
        lost = lost_requests(store, acknowledged)
        bodies = stored_bodies(store)
        ids = {body: request_id for request_id, body in acknowledged.items()}
        # A submit resent to the other broker whose first try was stored before the broker
        # died: its acknowledgement was cut (by the death, or a timeout under load), and the
        # resend found the key.
        cut = [body for body, began in load.failed_over
               if began < kills["broker"] and (stored := store.get(ids[body])) is not None
               and stored.created_at.timestamp() < kills["broker"]]
    finally:
        store.close_store()
    ran = executions(executed)
    twice = {body: n for body, n in ran.items() if n > 1}
    print(f"acknowledged {len(acknowledged)}, lost {len(lost)}, stored twice "
          f"{sum(1 for n in bodies.values() if n > 1)}, executed more than once {len(twice)}, "
          f"submits resent to the other broker after a timeout {len(load.failed_over)}, of "
          f"which stored at the first try, before the broker's death {len(cut)}")
    moments = [*kills.values(), time.time()]
    for (what, moment), end in zip(kills.items(), moments[1:], strict=False):
        print(f"longest client stall after the {what} kill: "
              f"{load.longest_stall(_monotonic(moment), _monotonic(end)):.2f} s")
    assert len(acknowledged) > 200, "too little load to prove anything"
    assert lost == [], f"lost {len(lost)} acknowledged requests, e.g. {lost[:3]}"
    assert [body for body, n in bodies.items() if n > 1] == []
    assert len(twice) <= len(kills) * DISPATCHERS * IN_FLIGHT_PER_SERVICE, twice


def _kill(proc: subprocess.Popen[bytes]) -> float:
    """SIGKILL; the wall-clock time it happened."""
    moment = time.time()
    Processes.kill(proc)
    return moment


def _monotonic(wall: float) -> float:
    return time.monotonic() - (time.time() - wall)
