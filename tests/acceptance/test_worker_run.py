"""`titanic worker run pkg.module:function`: a user's function as a worker, through the CLI."""

from __future__ import annotations

import json
import subprocess
import textwrap
from contextlib import ExitStack
from pathlib import Path

import pytest
from titanic_support import CLI, Processes, free_endpoint, run_cli, running, wait_until

from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.store import open_store
from titanic.worker.pool import ConnectionSettings

TASKS = '''
import threading

from titanic import PermanentError

both_in = threading.Barrier(2, timeout=30)


def shout(text: bytes, *more: bytes) -> str:
    if text == b"bad":
        raise ValueError("bad input")
    if text == b"never":
        raise PermanentError("not ever")
    return text.decode().upper() + "!"


def meet(text: bytes) -> list[bytes]:
    both_in.wait()  # returns only when two requests are in hand at once
    return [b"met", text]
'''

JOBS = '''
import titanic


@titanic.task
def add(a: int, b: int) -> int:
    return a + b


@titanic.task(name="shop.mul")
def mul(a: int, b: int) -> int:
    return a * b
'''


@pytest.fixture
def tasks(tmp_path: Path) -> Path:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "tasks.py").write_text(textwrap.dedent(TASKS))
    return tmp_path


def run_worker(procs: Processes, tasks: Path, broker: str, *args: str
               ) -> subprocess.Popen[bytes]:
    """`titanic worker run` started in the tasks folder, as a user would: `shop` is found there."""
    return procs.start("worker", [*CLI, "worker", "run", *args, "--broker", broker,
                                  "--heartbeat", "0.2"], cwd=tasks)


def test_failures_of_a_users_function_are_shown_by_fetch(procs: Processes, tasks: Path,
                                                         broker: str, stack: ExitStack) -> None:
    store = open_store(f"sqlite:///{tasks / 't.db'}")
    stack.callback(store.close_store)
    settings = DispatcherSettings(
        broker=broker, request_timeout=120, max_attempts=2, backoff=0.05, backoff_max=0.1,
        presence_interval=0.05, connection=ConnectionSettings(heartbeat_interval=0.2))
    stack.enter_context(running(Dispatcher(store, settings)))
    run_worker(procs, tasks, broker, "shop.tasks:shout", "--service", "shout")

    def submit(payload: str) -> str:
        done = run_cli("submit", "shout", payload, "--broker", broker, "--json")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["service"] == "shout"
        return str(shown["uuid"])

    good, bad, never = submit("hello"), submit("bad"), submit("never")
    fetched = run_cli("fetch", "--wait", "--timeout", "60", good, "--broker", broker)
    assert fetched.returncode == 0, fetched.stderr + procs.log("worker").encode()
    assert fetched.stdout == b"HELLO!\n"
    failed = run_cli("fetch", "--wait", "--timeout", "60", bad, "--broker", broker)
    assert failed.returncode == 5
    assert failed.stderr.decode() == (f"titanic: request {bad} is failed: ValueError: bad input"
                                      " (after 2 attempts)\n")
    hyphenated = f"{never[:8]}-{never[8:12]}-{never[12:16]}-{never[16:20]}-{never[20:]}".upper()
    permanent = run_cli("fetch", "--wait", "--timeout", "60", "--json", hyphenated,
                        "--broker", broker)
    assert permanent.returncode == 5
    shown = json.loads(permanent.stdout)
    assert {key: shown[key] for key in ("uuid", "state", "error")} == {
        "uuid": never, "state": "failed", "error": "PermanentError: not ever"}
    assert 'raise PermanentError("not ever")' in shown["traceback"]
    stored = store.get(never)
    assert stored is not None and stored.attempts == 1


def test_concurrency_serves_requests_at_once(procs: Processes, tasks: Path,
                                             broker: str) -> None:
    worker = run_worker(procs, tasks, broker, "shop.tasks:meet", "--service", "meet",
                        "--concurrency", "2")
    # Each call waits inside the function until the other one is there too.
    calls = [procs.start(f"call-{n}", [*CLI, "call", "meet", f"n{n}", "--broker", broker,
                                       "--timeout", "30", "--retries", "0", "--json"])
             for n in range(2)]
    for call in calls:
        assert call.wait(60) == 0
    answers = [json.loads(procs.log(f"call-{n}")) for n in range(2)]
    assert answers == [{"service": "meet", "frames": ["met", "n0"], "encoding": "utf-8"},
                       {"service": "meet", "frames": ["met", "n1"], "encoding": "utf-8"}]
    assert Processes.terminate(worker) == 0  # SIGTERM: every thread's worker stops


@pytest.mark.parametrize(("target", "says"), [
    ("shop.tasks", "'shop.tasks' defines no tasks (functions decorated with @titanic.task)"),
    ("shop.tasks:", "is not of the form pkg.module:function or pkg.module"),
    ("shop.nothing:shout", "cannot import 'shop.nothing': ModuleNotFoundError"),
    ("shop.tasks:whisper", "'shop.tasks' has no 'whisper'"),
    ("shop.tasks:both_in", "is a Barrier, not a function"),
])
def test_a_bad_target_is_one_line_and_exit_2(procs: Processes, tasks: Path, broker: str,
                                             target: str, says: str) -> None:
    worker = run_worker(procs, tasks, broker, target, "--service", "x")
    assert worker.wait(30) == 2
    output = procs.log("worker")
    assert output.count("\n") == 1 and says in output, output



@pytest.mark.parametrize(("args", "says"), [
    (["shop.jobs", "--service", "x"], "--service (TITANIC_SERVICE) goes with a plain function: "
     "the tasks of shop.jobs register under their own names (add, shop.mul)"),
    (["shop.jobs:add", "--service", "add"], "the tasks of shop.jobs:add register under"),
    (["shop.tasks:shout"], "shop.tasks:shout is a plain function: --service (TITANIC_SERVICE) "
     "names the service it serves"),
])
def test_service_names_a_plain_functions_service_only(procs: Processes, tasks: Path,
                                                      broker: str, args: list[str],
                                                      says: str) -> None:
    (tasks / "shop" / "jobs.py").write_text(textwrap.dedent(JOBS))
    worker = run_worker(procs, tasks, broker, *args)
    assert worker.wait(30) == 2
    output = procs.log("worker")
    assert output.count("\n") == 1 and says in output, output


COOPERATIVE = '''
import time
from pathlib import Path

import titanic


@titanic.task
def crunch(marker: str) -> str:
    Path(marker + ".started").write_text("")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if titanic.current().cancelled:
            Path(marker + ".stopped").write_text("")
            return "stopped"
        time.sleep(0.02)  # a step of the task's work
    return "ran to the end"
'''


def test_a_task_served_by_worker_run_sees_its_cancel(procs: Processes, tasks: Path) -> None:
    (tasks / "shop" / "jobs.py").write_text(textwrap.dedent(COOPERATIVE))
    endpoint = free_endpoint()
    procs.broker(endpoint)
    procs.cli("dispatcher", "dispatcher", "--broker", endpoint, "--db",
              f"sqlite:///{tasks / 't.db'}", "--heartbeat", "0.2")
    run_worker(procs, tasks, endpoint, "shop.jobs")
    marker = tasks / "crunch"
    submitted = run_cli("submit", "crunch", "--task-args", json.dumps({"args": [str(marker)]}),
                        "--broker", endpoint, "--timeout", "5")
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    wait_until(lambda: Path(f"{marker}.started").exists(), timeout=30, message="task started")
    cancelled = run_cli("cancel", request_id, "--broker", endpoint, "--timeout", "5")
    assert cancelled.stdout == b"cancelled (was dispatched)\n", cancelled.stderr
    wait_until(lambda: Path(f"{marker}.stopped").exists(), timeout=15, message="task stopped")
