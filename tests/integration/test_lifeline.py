"""The lifeline between `titanic up` and its children (cli/lifeline.py), with the test in `up`'s
place: closing its end is what the kernel does when `up` dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
from titanic_support import CLI, free_endpoint, start_broker, wait_until

from titanic.client import Client
from titanic.errors import UnreachableError
from titanic_cli.lifeline import VARIABLE, Lifeline, _inherited_read_end, follow_parent


@pytest.fixture
def lifeline() -> Iterator[Lifeline]:
    line = Lifeline()
    yield line
    line.close()  # if the test has not


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def start_child(children: list[subprocess.Popen[bytes]], lifeline: Lifeline, argv: list[str],
                log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=lifeline.env(dict(os.environ)), pass_fds=lifeline.fds,
                                stdout=out, stderr=subprocess.STDOUT)
    children.append(proc)
    return proc


def has_workers(broker: str, service: str) -> bool:
    """Whether the broker has workers for `service`; False while nothing listens there yet."""
    try:
        with Client(broker, timeout=1, retries=0) as client:
            return client.request("mmi.service", service.encode()) == [b"200"]
    except UnreachableError:
        return False


def test_a_worker_stops_cleanly_when_its_parent_is_gone(
        lifeline: Lifeline, children: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    with ExitStack() as stack:
        broker = start_broker(stack).bound[0]
        worker = start_child(children, lifeline, [*CLI, "worker", "echo", "--broker", broker,
                                                  "--service", "lifeline"], tmp_path / "w.log")
        wait_until(lambda: has_workers(broker, "lifeline"), timeout=30,
                   message="the worker registered")
        lifeline.close()
        assert worker.wait(30) == 0  # SIGTERM's path: a clean exit, not a kill
        wait_until(lambda: not has_workers(broker, "lifeline"), timeout=30,
                   message="the worker gone from the broker")
    assert "titanic up (the parent process) is gone: stopping" in (tmp_path / "w.log").read_text()


def test_a_hosting_broker_stops_cleanly_when_its_parent_is_gone(
        lifeline: Lifeline, children: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    broker = free_endpoint()
    proc = start_child(children, lifeline,
                       [*CLI, "broker", "--bind", broker, "--titanic", "--db",
                        f"sqlite:///{tmp_path / 't.db'}"], tmp_path / "b.log")
    wait_until(lambda: has_workers(broker, "titanic.request"), timeout=30,
               message="the broker serving titanic.request")
    lifeline.close()
    assert proc.wait(30) == 0
    log = (tmp_path / "b.log").read_text()
    assert "hosted dispatcher stopped" in log and "broker stopped" in log, log


def test_a_child_started_as_its_parent_dies_stops_at_once(
        lifeline: Lifeline, children: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    proc = start_child(children, lifeline,
                       [*CLI, "worker", "echo", "--broker", free_endpoint()], tmp_path / "w.log")
    lifeline.close()  # most likely before the child has even imported titanic
    # Stopped by SIGTERM before or after its handler is in place: either way it is gone.
    assert proc.wait(30) in (0, -signal.SIGTERM)


def test_a_child_ignoring_sigterm_is_killed_after_the_grace(
        lifeline: Lifeline, children: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "from titanic_cli.lifeline import follow_parent\n"
              "follow_parent(grace=0.5)\n"
              "print('watching', flush=True)\n"
              "time.sleep(60)\n")
    proc = start_child(children, lifeline, [sys.executable, "-c", script], tmp_path / "c.log")
    wait_until(lambda: "watching" in (tmp_path / "c.log").read_text(), timeout=30,
               message="the child watching")
    lifeline.close()
    assert proc.wait(30) == -signal.SIGKILL


def test_only_an_inherited_pipe_counts_as_a_lifeline(tmp_path: Path) -> None:
    read, write = os.pipe()
    with open(tmp_path / "file", "wb") as regular:
        try:
            assert _inherited_read_end(str(read)) == read
            for stray in (None, "", "0", "1", "2", "-1", "x7", str(regular.fileno())):
                assert _inherited_read_end(stray) is None, stray
            os.close(write)
            os.close(read)
            assert _inherited_read_end(str(read)) is None  # closed
        finally:
            for fd in (read, write):
                with suppress(OSError):
                    os.close(fd)


def test_a_process_without_the_variable_watches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "0")  # stdin: not a lifeline, and the variable is dropped
    follow_parent()
    assert VARIABLE not in os.environ
    assert not any(thread.name == "titanic-lifeline" for thread in threading.enumerate())
