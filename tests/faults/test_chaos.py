"""The chaos run: paced submits while a worker, the broker and the dispatcher are each killed
twice; how many requests ran more than once.

600 submits through `TitanicClient.submit` (unique bodies, each retried with its key until
acknowledged) are paced over 24 s. Meanwhile a worker, the broker and the dispatcher are each
killed with SIGKILL twice and restarted (the broker on the same port). With the dispatcher in the
broker, killing the broker kills its dispatcher: the broker is killed four times instead.

The two workers come back RECONNECT_S after losing their broker, the dispatcher within half a
second: after a broker restart the dispatcher serves again before the service it forwards to
has workers there. One of the dispatcher's kills comes 3 s after a broker kill's restart
answered, in that gap: what the dispatcher forwarded to the restarted broker then waits there
for workers, runs when they come, and its replies find no dispatcher to take them.

Then the test waits until every stored request is done and prints, per arrangement: acknowledged,
lost (acknowledged without its right reply), wrong (a stored reply that is not its body's) and
executed more than once (from the workers' execution logs). It asserts that nothing acknowledged
is lost, nothing stored is wrong, every acknowledged request ran, and at most 1% of them ran more
than once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from ha_support import (
    COUNTING_WORKER,
    executions,
    lost_requests,
    wait_all_finished,
    wrong_replies,
)
from titanic_support import Processes, free_endpoint, wait_until

from titanic.client import Client
from titanic.client.tsp import TitanicClient
from titanic.errors import TitanicError
from titanic.store import open_store

pytestmark = [pytest.mark.slow]

SUBMITS = 600
#: Seconds between two submits: the 600 span 24 s, across every kill.
PACE = 0.04
#: Most requests executed more than once, as a share of those acknowledged.
MOST_REPEATED = 0.01
#: The workers' reconnect delay after losing their broker, in seconds.
RECONNECT_S = 3.5
#: The kills, each this many seconds after the one before was restarted (a broker: answering).
OWN_DISPATCHER = [(3.0, "worker"), (4.0, "dispatcher"), (4.0, "broker"), (3.0, "dispatcher"),
                  (4.0, "worker"), (4.0, "broker")]
IN_THE_BROKER = [(3.0, "worker"), (4.0, "broker"), (3.0, "broker"), (4.0, "broker"),
                 (4.0, "worker"), (4.0, "broker")]
FORWARDING = ["--heartbeat", "0.2", "--request-timeout", "3", "--backoff", "0.2",
              "--backoff-max", "1", "--max-attempts", "20"]


class PacedSubmits:
    """A client thread submitting SUBMITS unique bodies, one every PACE seconds (after a stall
    the next ones catch up), each retried with its key until acknowledged."""

    def __init__(self, endpoint: str) -> None:
        self.acknowledged: dict[str, bytes] = {}
        self.unacknowledged: list[bytes] = []
        self._endpoint = endpoint
        self._thread = threading.Thread(target=self._submit, daemon=True)
        self._stop = threading.Event()

    def __enter__(self) -> PacedSubmits:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait(self, timeout: float) -> None:
        """Until every submit was made (acknowledged or given up on)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"submits not finished within {timeout} s"

    def _submit(self) -> None:
        start = time.monotonic()
        with TitanicClient(self._endpoint, timeout=1.0, retries=0) as titanic:
            for n in range(SUBMITS):
                if self._stop.wait(max(0.0, start + n * PACE - time.monotonic())):
                    return
                body = f"chaos-{n}".encode()
                request_id = self._until_acknowledged(titanic, body)
                if request_id is None:
                    self.unacknowledged.append(body)
                else:
                    self.acknowledged[request_id] = body

    def _until_acknowledged(self, titanic: TitanicClient, body: bytes) -> str | None:
        key = uuid.uuid4().hex  # the same key on every try: stored once
        deadline = time.monotonic() + 20.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                return titanic.submit("work", body, key=key)
            except TitanicError:
                continue
        return None


def _answers(endpoint: str) -> bool:
    """The broker at `endpoint` answers mmi.service."""
    with Client(endpoint, timeout=0.3, retries=0) as client:
        return client.has_workers("work", 0.3) is not None


def _run_chaos(procs: Processes, tmp_path: Path, db_url: str, hosted: bool) -> None:
    endpoint = free_endpoint()
    executed = tmp_path / "executions"
    executed.mkdir()
    worker_script = tmp_path / "worker.py"
    worker_script.write_text(COUNTING_WORKER)
    forwarding = ["--db", db_url, *FORWARDING]
    counter = iter(range(1000))

    def start_worker() -> subprocess.Popen[bytes]:
        n = next(counter)
        return procs.start(f"worker{n}", [sys.executable, str(worker_script), endpoint,
                                          str(executed / f"w{n}.log"), str(RECONNECT_S)])

    def start_broker() -> subprocess.Popen[bytes]:
        name = f"broker{next(counter)}"
        if hosted:
            proc = procs.cli(name, "broker", "--bind", endpoint, "--titanic", *forwarding)
        else:
            proc = procs.broker(endpoint, name=name)
        wait_until(lambda: _answers(endpoint), timeout=30, message="the broker answering")
        return proc

    def start_dispatcher() -> subprocess.Popen[bytes]:
        return procs.cli(f"dispatcher{next(counter)}", "dispatcher", "--broker", endpoint,
                         *forwarding)

    running = {"broker": start_broker()}
    if not hosted:
        running["dispatcher"] = start_dispatcher()
    workers = [start_worker(), start_worker()]
    restart: dict[str, Callable[[], subprocess.Popen[bytes]]] = {
        "broker": start_broker, "dispatcher": start_dispatcher}
    began = time.monotonic()
    with PacedSubmits(endpoint) as submits:
        for delay, what in IN_THE_BROKER if hosted else OWN_DISPATCHER:
            time.sleep(delay)  # the schedule of the kills, not a wait for a condition
            print(f"t+{time.monotonic() - began:4.1f} s kill {what}, "
                  f"{len(submits.acknowledged)} acknowledged so far")
            if what == "worker":
                Processes.kill(workers.pop(0))
                workers.append(start_worker())
            else:
                Processes.kill(running[what])
                running[what] = restart[what]()
        submits.wait(timeout=120)
    acknowledged = dict(submits.acknowledged)
    store = open_store(db_url, migrate=False)
    try:
        wait_all_finished(store, timeout=90)
        finished = time.monotonic() - began
        lost = lost_requests(store, acknowledged)
        wrong = wrong_replies(store)
    finally:
        store.close_store()
    ran = executions(executed)
    repeated = {body: n for body, n in ran.items() if n > 1}
    print(f"{'in the broker' if hosted else 'own dispatcher'}, {db_url.split(':', maxsplit=1)[0]}: "
          f"acknowledged {len(acknowledged)} (not {len(submits.unacknowledged)}), "
          f"lost {len(lost)}, wrong {len(wrong)}, executed more than once {len(repeated)}, "
          f"all done {finished:.1f} s after the first submit")
    assert len(acknowledged) >= SUBMITS * 0.9, "too few submits acknowledged to prove anything"
    assert lost == [], f"lost {len(lost)} acknowledged requests, e.g. {lost[:3]}"
    assert wrong == [], f"{len(wrong)} wrong replies stored, e.g. {wrong[:3]}"
    never_ran = [body for body in acknowledged.values() if ran[body] == 0]
    assert never_ran == [], f"{len(never_ran)} acknowledged requests never ran"
    assert len(repeated) <= MOST_REPEATED * len(acknowledged), (
        f"{len(repeated)} of {len(acknowledged)} ran more than once, e.g. {sorted(repeated)[:5]}")


ARRANGEMENTS = [pytest.param(False, id="own dispatcher"), pytest.param(True, id="in the broker")]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("hosted", ARRANGEMENTS)
def test_chaos_on_sqlite_runs_at_most_one_percent_twice(
        procs: Processes, tmp_path: Path, sqlite_url: str, hosted: bool) -> None:
    _run_chaos(procs, tmp_path, sqlite_url, hosted)


@pytest.mark.postgres
@pytest.mark.timeout(240)
@pytest.mark.parametrize("hosted", ARRANGEMENTS)
def test_chaos_on_postgres_runs_at_most_one_percent_twice(
        procs: Processes, tmp_path: Path, postgres_url: str, hosted: bool) -> None:
    _run_chaos(procs, tmp_path, postgres_url, hosted)
