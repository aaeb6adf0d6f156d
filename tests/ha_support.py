"""Shared pieces of the high-availability fault tests: a counting worker, submitting clients
that note their stalls, and the checks on what the store holds afterwards."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from pathlib import Path

from titanic.client.tsp import TitanicClient
from titanic.errors import TitanicError
from titanic.settings import CLIENT_TIMEOUT_S
from titanic.store import RequestStatus, Store

#: A worker registered with every broker given (comma-separated), logging each execution; an
#: optional third argument is its reconnect delay after losing the broker, in seconds (0.05).
COUNTING_WORKER = """
import os, sys
from titanic.worker import Worker

log = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
reconnect = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05

def handler(frames):
    os.write(log, frames[0] + b"\\n")  # one whole line per execution, atomic with O_APPEND
    return [b"done:" + frames[0]]

Worker(sys.argv[1], "work", handler, heartbeat_interval=0.2, reconnect_initial=reconnect,
       reconnect_max=max(0.5, reconnect)).run()
"""


class Load:
    """Client threads submitting unique bodies through every broker, each submit retried (with
    its key) until acknowledged; the times of acknowledgements give the stalls."""

    def __init__(self, brokers: list[str], threads: int, timeout: float = CLIENT_TIMEOUT_S
                 ) -> None:
        self.acknowledged: dict[str, bytes] = {}
        self.failed_over: list[tuple[bytes, float]] = []  # (body, when its submit began)
        self._acks: list[list[float]] = [[] for _ in range(threads)]
        self._brokers = brokers
        self._timeout = timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._submit, args=(n,), daemon=True)
                         for n in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _submit(self, index: int) -> None:
        with TitanicClient(self._brokers, timeout=self._timeout, retries=3) as titanic:
            n = 0
            while not self._stop.is_set():
                body = f"t{index}-{n}".encode()
                n += 1
                began, broker = time.time(), titanic.broker
                try:
                    request_id = titanic.submit("work", body)
                except TitanicError:
                    continue  # not acknowledged: not promised
                with self._lock:
                    self.acknowledged[request_id] = body
                    self._acks[index].append(time.monotonic())
                    if titanic.broker != broker:
                        self.failed_over.append((body, began))

    def longest_stall(self, start: float, end: float) -> float:
        """The longest gap between two acknowledgements of one client that ends between `start`
        and `end` (monotonic seconds)."""
        stalls = [0.0]
        for acks in self._acks:
            stalls += [later - earlier for earlier, later in itertools.pairwise(acks)
                       if start < later <= end]
        return max(stalls)


def wait_all_finished(store: Store, timeout: float) -> None:
    """Until no stored request is pending or dispatched."""
    deadline = time.monotonic() + timeout
    while True:
        counts = store.stats().by_status()
        if not counts.get(RequestStatus.PENDING) and not counts.get(RequestStatus.DISPATCHED):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"requests still unfinished after {timeout} s: {counts}")
        time.sleep(0.5)


def lost_requests(store: Store, acknowledged: dict[str, bytes]) -> list[str]:
    """Acknowledged requests whose correct reply is not stored."""
    lost = []
    for request_id, body in acknowledged.items():
        stored = store.get(request_id)
        if stored is None or stored.reply != (b"done:" + body,):
            lost.append(request_id)
    return lost


def stored_bodies(store: Store) -> Counter[bytes]:
    """How many stored requests carry each body."""
    bodies: Counter[bytes] = Counter()
    after = None
    while page := store.list(limit=1000, after=after):
        bodies.update(request.request[0] for request in page)
        after = page[-1].id
    return bodies


def wrong_replies(store: Store) -> list[str]:
    """Stored requests whose stored reply is not the counting worker's for their body."""
    wrong = []
    after = None
    while page := store.list(limit=1000, after=after):
        wrong += [request.id for request in page if request.reply is not None
                  and request.reply != (b"done:" + request.request[0],)]
        after = page[-1].id
    return wrong


def executions(folder: Path) -> Counter[bytes]:
    """How many times each body was executed, from the workers' logs."""
    counts: Counter[bytes] = Counter()
    for log in folder.glob("*.log"):
        counts.update(line for line in log.read_bytes().splitlines() if line)
    return counts
