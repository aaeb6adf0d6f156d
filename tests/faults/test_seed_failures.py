"""The seed's three failure cases by name, through Titanic: only the killed process restarts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from titanic_support import Processes, free_endpoint, wait_until

from titanic.client.tsp import ReplyState, TitanicClient

WORKER = """
import os, sys, time
from pathlib import Path
from titanic.worker import Worker

def handler(frames):
    marker = Path(sys.argv[2])
    if sys.argv[3] == "hang" and not marker.exists():
        marker.write_text("took it")
        time.sleep(60)  # killed in here
    return [b"done:" + frames[0]]

Worker(sys.argv[1], "work", handler, heartbeat_interval=0.2, reconnect_initial=0.05).run()
"""


class Titanic:
    """Broker, dispatcher and worker processes, each restartable alone."""

    def __init__(self, procs: Processes, tmp_path: Path) -> None:
        self.procs = procs
        self.tmp = tmp_path
        self.endpoint = free_endpoint()
        self.db = f"sqlite:///{tmp_path / 'titanic.db'}"
        self.script = tmp_path / "worker.py"
        self.script.write_text(WORKER)
        self.runs = 0

    def broker(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        return self.procs.broker(self.endpoint, name=f"broker{self.runs}")

    def dispatcher(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        return self.procs.cli(f"dispatcher{self.runs}", "dispatcher", "--broker", self.endpoint,
                              "--db", self.db, "--heartbeat", "0.2", "--request-timeout", "2",
                              "--backoff", "0.1", "--backoff-max", "0.5")

    def worker(self, mode: str = "serve") -> subprocess.Popen[bytes]:
        self.runs += 1
        return self.procs.start(f"worker{self.runs}", [sys.executable, str(self.script),
                                                       self.endpoint, str(self.tmp / "mark"),
                                                       mode])

    def wait_all(self, titanic: TitanicClient, ids: dict[str, bytes]) -> None:
        for request_id, body in ids.items():
            fetched = titanic.wait(request_id, timeout=60)
            assert fetched.state is ReplyState.DONE, (request_id, fetched)
            assert fetched.reply == [b"done:" + body]


@pytest.fixture
def titanic_procs(tmp_path: Path) -> Iterator[Titanic]:
    procs = Processes(tmp_path)
    try:
        yield Titanic(procs, tmp_path)
    finally:
        procs.close()


def test_worker_down_mid_request(titanic_procs: Titanic, tmp_path: Path) -> None:
    t = titanic_procs
    t.broker(), t.dispatcher()
    hung = t.worker("hang")
    with TitanicClient(t.endpoint, timeout=2, retries=5) as titanic:
        ids = {titanic.submit("work", b"job"): b"job"}
        wait_until((tmp_path / "mark").exists, timeout=30, message="worker took the request")
        Processes.kill(hung)
        t.worker()  # only the killed process is replaced
        t.wait_all(titanic, ids)


def test_broker_down(titanic_procs: Titanic) -> None:
    t = titanic_procs
    broker = t.broker()
    t.dispatcher(), t.worker()
    with TitanicClient(t.endpoint, timeout=1, retries=30) as titanic:
        ids = {titanic.submit("work", f"before-{n}".encode()): f"before-{n}".encode()
               for n in range(20)}
        Processes.kill(broker)
        t.broker()  # same port; dispatcher, worker and this client carry on by themselves
        ids.update({titanic.submit("work", f"after-{n}".encode()): f"after-{n}".encode()
                    for n in range(20)})
        t.wait_all(titanic, ids)


def test_titanic_server_down(titanic_procs: Titanic) -> None:
    t = titanic_procs
    t.broker()
    dispatcher = t.dispatcher()
    with TitanicClient(t.endpoint, timeout=1, retries=30) as titanic:
        ids = {titanic.submit("work", f"n{n}".encode()): f"n{n}".encode() for n in range(50)}
        Processes.kill(dispatcher)
        t.worker()
        t.dispatcher()
        ids.update({titanic.submit("work", b"late"): b"late"})
        t.wait_all(titanic, ids)
