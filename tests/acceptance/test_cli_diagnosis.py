"""After a timeout the CLI says which piece is down; `up` fails fast on what restarts can't fix."""

from __future__ import annotations

import logging
import re
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
import zmq
from titanic_support import (
    FAST_BROKER,
    Processes,
    free_endpoint,
    run_cli,
    running,
    start_broker,
    wait_until,
)

from titanic.client.tsp import TitanicClient
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.errors import TitanicTimeoutError
from titanic.store import open_store
from titanic.worker import Worker
from titanic.worker.pool import ConnectionSettings


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text


def test_no_broker_at_all(tmp_path: Path) -> None:
    nobody = free_endpoint()
    for args in (["submit", "echo", "x"], ["fetch", "0" * 32], ["call", "echo", "x"]):
        done = run_cli(*args, "--broker", nobody, "--timeout", "0.5", "--retries", "0")
        assert done.returncode == 6
        assert f"nothing listens at {nobody} (connection refused)" in one_line(done.stderr)


def test_broker_without_dispatcher_or_workers(broker: str) -> None:
    submitted = run_cli("submit", "echo", "x", "--broker", broker, "--timeout", "0.5",
                        "--retries", "0")
    assert submitted.returncode == 6
    assert ("the broker answers, but no worker serves 'titanic.request' (is titanic-dispatcher "
            "running?)") in one_line(submitted.stderr)
    called = run_cli("call", "nobody", "x", "--broker", broker, "--timeout", "0.5",
                     "--retries", "0")
    assert called.returncode == 6
    assert "the broker answers, but no worker serves 'nobody'" in one_line(called.stderr)


def test_submit_to_a_service_without_workers_warns_and_stores(broker: str, tmp_path: Path,
                                                              stack: ExitStack) -> None:
    store = open_store(f"sqlite:///{tmp_path / 't.db'}")
    stack.callback(store.close_store)
    settings = DispatcherSettings(broker=broker,
                                  connection=ConnectionSettings(heartbeat_interval=0.2))
    stack.enter_context(running(Dispatcher(store, settings)))
    done = run_cli("submit", "lonely", "x", "--broker", broker, "--timeout", "10")
    assert done.returncode == 0, done.stderr
    assert "service 'lonely' has no workers now" in one_line(done.stderr)
    assert store.get(done.stdout.decode().strip()) is not None
    stack.enter_context(running(Worker(broker, "echo", lambda f: f, heartbeat_interval=0.2)))
    wait_until(lambda: TitanicClient(broker).has_workers("echo"), message="echo registered")
    quiet = run_cli("submit", "echo", "x", "--broker", broker, "--timeout", "10")
    assert quiet.returncode == 0 and quiet.stderr == b""


@pytest.mark.parametrize("total", [5.0, 1.0, 0.2])
def test_a_fetch_timeout_fits_the_time_given_in_all(total: float) -> None:
    # Counted from what the client did (attempts of a wait, and the MMI probe's share), not
    # measured: a peer takes the connection and never answers, so every wait runs to its end.
    endpoint = free_endpoint()
    silent = zmq.Context.instance().socket(zmq.ROUTER)
    silent.linger = 0
    silent.bind(endpoint)
    try:
        with (TitanicClient(endpoint, timeout=2.5, retries=2) as client,
              pytest.raises(TitanicTimeoutError) as raised):
            client.wait("0" * 32, timeout=total)
    finally:
        silent.close(0)
    found = re.search(r"after (\d+) attempt\(s\) of ([\d.e-]+) s", str(raised.value))
    assert found is not None, raised.value
    probe = min(1.0, total / 5)
    assert int(found[1]) * float(found[2]) + probe <= total + 1e-6
    assert "does not answer" in str(raised.value)


def test_up_on_a_port_in_use_exits_at_once(tmp_path: Path) -> None:
    endpoint = free_endpoint()
    context = zmq.Context.instance()
    taken = context.socket(zmq.ROUTER)
    taken.linger = 0
    taken.bind(endpoint)
    try:
        done = run_cli("up", "--bind", endpoint, "--db", str(tmp_path / "t.db"), timeout=60)
    finally:
        taken.close(0)
    assert done.returncode == 10
    assert f"cannot bind {endpoint}: Address already in use" in one_line(done.stderr)
    assert not (tmp_path / "t.db").exists()


def test_up_stops_when_a_child_exits_on_a_configuration_error(procs: Processes) -> None:
    up = procs.cli("up", "up", "--bind", free_endpoint(), "--db", "nosuchdb://x")
    assert up.wait(60) == 7
    output = procs.log("up")
    assert "unknown database kind 'nosuchdb'" in output
    assert "titanic: broker exited with status 7" in output
    assert output.count("started broker") == 1  # not restarted


def test_registrations_are_one_line_per_service(caplog: pytest.LogCaptureFixture,
                                                stack: ExitStack) -> None:
    caplog.set_level(logging.INFO, logger="titanic.broker")
    server = start_broker(stack, replace(FAST_BROKER, heartbeat_interval=0.2))
    endpoint = server.bound[0]
    for _ in range(5):
        stack.enter_context(running(Worker(endpoint, "many", lambda f: f,
                                           heartbeat_interval=0.2)))
    wait_until(lambda: server.stats.workers_registered == 5, message="five registered")
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.INFO and "registered for" in r.getMessage()]
    assert len(lines) == 1 and "registered for 'many' (7/MDP)" in lines[0]


def test_dispatcher_start_up_logs_no_alembic_lines(procs: Processes, broker: str,
                                                   tmp_path: Path) -> None:
    procs.cli("dispatcher", "dispatcher", "--broker", broker, "--db", str(tmp_path / "t.db"))
    wait_until(lambda: "dispatcher serving" in procs.log("dispatcher"), timeout=60,
               message="dispatcher started")
    output = procs.log("dispatcher")
    assert "alembic" not in output, output
    assert len(output.splitlines()) <= 3, output
