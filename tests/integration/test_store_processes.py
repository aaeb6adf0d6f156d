"""Several processes on one database: claims never overlap; SIGKILL mid-write loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from titanic_support import wait_until

from titanic.store import NewRequest, RequestStatus, open_store

CLAIMER = """
import json, sys, time
from pathlib import Path
from titanic.store import open_store
store = open_store(sys.argv[1], migrate=False)
Path(sys.argv[3] + "-" + sys.argv[2]).touch()  # ready
deadline = time.monotonic() + 60
while not Path(sys.argv[3]).exists() and time.monotonic() < deadline:
    time.sleep(0.001)  # all claimers start together, so they contend
claimed = []
while True:
    batch = store.claim_due(None, 7, 60)
    if not batch:
        break
    claimed += [r.id for r in batch]
    for r in batch:
        store.complete(r.id, [b"by " + sys.argv[2].encode()])
    # A dispatcher does other work between claims. Without a pause, a process looping on
    # SQLite's write lock re-takes it before the others' busy handlers wake up to try.
    time.sleep(0.002)
print(json.dumps(claimed))
"""

WRITER = """
import sys
from titanic.store import open_store
store = open_store(sys.argv[1], migrate=False)
n = 0
while True:
    request_id = store.submit("svc", [str(n).encode()])
    print(request_id, n, flush=True)   # printed only after the commit
    n += 1
"""


def test_concurrent_claimers_never_get_the_same_request(db_url: str, tmp_path: Path) -> None:
    store = open_store(db_url)
    ids = store.submit_many([NewRequest("svc", (str(n).encode(),)) for n in range(600)])
    script = tmp_path / "claimer.py"
    script.write_text(CLAIMER)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), db_url, str(n), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in range(3)]
    try:
        wait_until(lambda: all((tmp_path / f"go-{n}").exists() for n in range(3)), timeout=60,
                   message="every claimer ready")
        go.touch()
        results = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
    claims = [json.loads(out) for out, _ in results]
    everything = [request_id for batch in claims for request_id in batch]
    assert sorted(everything) == sorted(ids), "a request was claimed twice or never"
    assert sum(1 for batch in claims if batch) >= 2, "only one process claimed: no contention"
    assert store.stats().by_status() == {RequestStatus.DONE: 600}
    store.close_store()


def test_sigkill_mid_write_loses_no_committed_request(db_url: str, tmp_path: Path) -> None:
    open_store(db_url).close_store()  # schema in place before the writer starts
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out = tmp_path / "acknowledged.txt"
    with out.open("wb") as sink:
        writer = subprocess.Popen([sys.executable, str(script), db_url], stdout=sink)
        try:
            wait_until(lambda: out.stat().st_size > 20_000, timeout=60,
                       message="writer acknowledged enough requests")
            time.sleep(0.05)  # let it be mid-stream, not between our checks
            writer.send_signal(signal.SIGKILL)
            writer.wait(10)
        finally:
            writer.kill()
    acknowledged = [line.split() for line in out.read_text().splitlines() if line.count(" ") == 1]
    assert len(acknowledged) > 100
    store = open_store(db_url)
    try:
        for request_id, n in acknowledged:
            stored = store.get(request_id)
            assert stored is not None, f"acknowledged request {n} lost"
            assert stored.request == (n.encode(),)
        store.submit("svc", [b"still usable"])  # the database takes writes after the kill
    finally:
        store.close_store()


def test_two_stores_submitting_the_same_keys_at_once_store_each_once(db_url: str) -> None:
    # Two dispatchers given the same resent submit at the same moment (through two brokers).
    stores = [open_store(db_url), open_store(db_url, migrate=False)]
    keys = [f"order-{n}" for n in range(50)]
    barrier = threading.Barrier(2)
    answers: list[list[str]] = [[], []]

    def submit(index: int) -> None:
        barrier.wait(30)
        for start in range(0, len(keys), 5):
            batch = [NewRequest("svc", (key.encode(),), idempotency_key=key)
                     for key in keys[start:start + 5]]
            answers[index] += stores[index].submit_many(batch)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert answers[0] == answers[1] and len(set(answers[0])) == len(keys)
        assert stores[0].stats().by_status() == {RequestStatus.PENDING: len(keys)}
    finally:
        for store in stores:
            store.close_store()
