"""The installed commands, in subprocesses, the way a user drives them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from titanic_support import Processes, free_endpoint, run_cli

from titanic.client.tsp import ReplyState, TitanicClient

FAST_DISPATCHER = ["--heartbeat", "0.2", "--request-timeout", "2", "--backoff", "0.1",
                   "--backoff-max", "0.5"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'titanic.db'}"
    return str(request.getfixturevalue("postgres_url"))


def start_titanic(procs: Processes, db_url: str) -> str:
    broker = free_endpoint()
    procs.broker(broker)
    procs.cli("dispatcher", "dispatcher", "--broker", broker, "--db", db_url, *FAST_DISPATCHER)
    return broker


def start_dispatcher(procs: Processes, name: str, broker: str,
                     db_url: str) -> subprocess.Popen[bytes]:
    return procs.cli(name, "dispatcher", "--broker", broker, "--db", db_url, *FAST_DISPATCHER)


def cli(broker: str, *args: str,
        input: bytes | None = None,  # noqa: A002 - as run_cli and subprocess.run name it
        ) -> subprocess.CompletedProcess[bytes]:
    return run_cli(*args, "--broker", broker, input=input)


def test_submit_pending_worker_reply_close_unknown(procs: Processes, db_url: str) -> None:
    broker = start_titanic(procs, db_url)
    submitted = cli(broker, "submit", "echo", "hello titanic", "--timeout", "5")
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    assert len(request_id) == 32

    pending = cli(broker, "fetch", request_id)
    assert pending.returncode == 3, pending.stderr
    assert b"pending" in pending.stderr and b"Traceback" not in pending.stderr

    procs.cli("worker", "worker", "echo", "--broker", broker, "--heartbeat", "0.2")
    done = cli(broker, "fetch", "--wait", "--timeout", "30", request_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello titanic\n"

    closed = cli(broker, "close", request_id)
    assert closed.returncode == 0, closed.stderr
    gone = cli(broker, "fetch", request_id)
    assert gone.returncode == 4
    assert gone.stderr.count(b"\n") == 1 and b"unknown" in gone.stderr


def test_payload_from_stdin_file_and_extra_frames(procs: Processes, tmp_path: Path) -> None:
    broker = start_titanic(procs, f"sqlite:///{tmp_path / 't.db'}")
    procs.cli("worker", "worker", "echo", "--broker", broker, "--heartbeat", "0.2")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"from a file")
    from_file = cli(broker, "submit", "echo", f"@{payload}", "--frame", "-", "--frame", "@@at",
                    input=b"from stdin")
    assert from_file.returncode == 0, from_file.stderr
    request_id = from_file.stdout.decode().strip()
    done = cli(broker, "fetch", "--wait", "--timeout", "30", request_id)
    assert done.stdout == b"from a file\nfrom stdin\n@at\n"


def test_dispatcher_killed_with_200_acknowledged_delivers_all_after_restart(
        procs: Processes, db_url: str) -> None:
    broker = free_endpoint()
    procs.broker(broker)
    dispatcher = start_dispatcher(procs, "dispatcher", broker, db_url)
    with TitanicClient(broker, timeout=5, retries=2) as titanic:
        ids = {titanic.submit("echo", f"n{n}".encode()): f"n{n}".encode() for n in range(200)}
        Processes.kill(dispatcher)  # SIGKILL: no chance to clean up
        procs.cli("worker", "worker", "echo", "--broker", broker, "--heartbeat", "0.2")
        start_dispatcher(procs, "dispatcher2", broker, db_url)
        for request_id, body in ids.items():
            fetched = titanic.wait(request_id, timeout=60)
            assert fetched.state is ReplyState.DONE, (request_id, fetched)
            assert fetched.reply == [body]


def test_errors_are_one_line_with_documented_exit_codes(tmp_path: Path) -> None:
    nobody = free_endpoint()
    unreachable = run_cli("submit", "echo", "x", "--broker", nobody, "--timeout", "0.2",
                          "--retries", "0")
    assert unreachable.returncode == 6
    assert unreachable.stderr.count(b"\n") == 1 and b"Traceback" not in unreachable.stderr
    bad_uuid = run_cli("fetch", "xyz", "--broker", nobody)
    assert bad_uuid.returncode == 2
    assert b"Traceback" not in bad_uuid.stderr
    db = f"sqlite:///{tmp_path / 'x.db'}"
    missing = run_cli("status", "0" * 32, "--db", db)  # read-only: never makes the database
    assert missing.returncode == 7 and b"titanic db upgrade" in missing.stderr
    assert run_cli("db", "upgrade", "--db", db).returncode == 0
    unknown = run_cli("status", "0" * 32, "--db", db)
    assert unknown.returncode == 4
    assert unknown.stderr.strip().endswith(b"unknown")


def test_status_list_and_retry_read_the_database(procs: Processes, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 't.db'}"
    broker = start_titanic(procs, db_url)
    request_id = cli(broker, "submit", "nobody-serves-this", "x").stdout.decode().strip()
    shown = run_cli("status", request_id, "--db", db_url, "--json")
    assert shown.returncode == 0, shown.stderr
    assert b'"state": "pending"' in shown.stdout
    listed = run_cli("list", "--db", db_url, "--service", "nobody-serves-this")
    assert request_id.encode() in listed.stdout
    not_failed = run_cli("retry", request_id, "--db", db_url)
    assert not_failed.returncode == 1 and b"pending" in not_failed.stderr


DYING_WORKER = """
import os, signal, sys
from pathlib import Path
from titanic.worker import Worker

marker = Path(sys.argv[2])

def handler(frames):
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # dies mid-request, before replying
    return frames

Worker(sys.argv[1], "fragile", handler, heartbeat_interval=0.2).run()
"""


def test_worker_dying_mid_request_is_retried_and_completes(procs: Processes,
                                                           tmp_path: Path) -> None:
    broker = start_titanic(procs, f"sqlite:///{tmp_path / 't.db'}")
    script = tmp_path / "dying_worker.py"
    script.write_text(DYING_WORKER)
    marker = tmp_path / "died"
    for n in range(2):
        procs.start(f"fragile{n}", [sys.executable, str(script), broker, str(marker)])
    with TitanicClient(broker, timeout=5, retries=2) as titanic:
        request_id = titanic.submit("fragile", b"survive")
        fetched = titanic.wait(request_id, timeout=60)
    assert marker.exists(), "no worker died: the test proved nothing"
    assert fetched.state is ReplyState.DONE
    assert fetched.reply == [b"survive"]


def test_dispatcher_sigterm_exits_zero(procs: Processes, tmp_path: Path) -> None:
    broker = free_endpoint()
    procs.broker(broker)
    dispatcher = start_dispatcher(procs, "dispatcher", broker, f"sqlite:///{tmp_path / 't.db'}")
    with TitanicClient(broker, timeout=5, retries=2) as titanic:
        titanic.submit("nobody", b"x")  # serving: the dispatcher is up
    assert Processes.terminate(dispatcher, timeout=15) == 0
    assert "dispatcher stopped" in procs.log("dispatcher")


def test_titanic_up_demo_runs_the_main_job(procs: Processes, tmp_path: Path) -> None:
    broker = free_endpoint()
    up = procs.cli("up", "up", "--demo", "--bind", broker, "--db",
                   f"sqlite:///{tmp_path / 'up.db'}")
    with TitanicClient(broker, timeout=2, retries=10) as titanic:
        request_id = titanic.submit("echo", b"hello from up")
        fetched = titanic.wait(request_id, timeout=60)
    assert fetched.state is ReplyState.DONE and fetched.reply == [b"hello from up"]
    assert Processes.terminate(up, timeout=30) == 0
    assert "titanic up: stopped" in procs.log("up")


def test_oversized_request_is_refused_with_a_clear_answer(procs: Processes,
                                                          tmp_path: Path) -> None:
    broker = free_endpoint()
    procs.broker(broker)
    procs.cli("dispatcher", "dispatcher", "--broker", broker, "--db",
              f"sqlite:///{tmp_path / 't.db'}", "--heartbeat", "0.2", "--max-request-size", "1000")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1001)
    refused = cli(broker, "submit", "echo", f"@{big}", "--timeout", "5")
    assert refused.returncode == 1
    assert refused.stderr.count(b"\n") == 1
    # Refused by the client before it is sent: the server said what it stores.
    assert b"the request body is 1,001 bytes, over the 1,000 bytes that the Titanic server" \
        in refused.stderr
    accepted = cli(broker, "submit", "echo", "x" * 1000, "--timeout", "5")
    assert accepted.returncode == 0, accepted.stderr
