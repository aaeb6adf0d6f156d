"""Encryption at rest driven through the installed commands: keygen, a dispatcher with
--store-key, what the SQLite file holds, reading with and without the key, rotation."""

from __future__ import annotations

import stat
from pathlib import Path

from titanic_support import Processes, free_endpoint, run_cli

SECRET = "the-secret-payload-0451"


def one_line(stderr: bytes) -> str:
    assert b"Traceback" not in stderr and stderr.count(b"\n") == 1, stderr
    return stderr.decode()


def test_sealed_flow_rotation_and_reading_without_the_key(procs: Processes,
                                                         tmp_path: Path) -> None:
    key, database = tmp_path / "store.key", tmp_path / "titanic.db"
    made = run_cli("db", "keygen", str(key))
    assert made.returncode == 0 and "store key" in made.stdout.decode(), made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = run_cli("db", "keygen", str(key))
    assert again.returncode == 8 and "not overwriting" in one_line(again.stderr)
    db = ["--db", f"sqlite:///{database}"]
    broker = free_endpoint()
    procs.broker(broker)
    dispatcher = procs.cli("dispatcher", "dispatcher", "--broker", broker, *db, "--heartbeat",
                           "0.2", "--store-key", str(key))
    procs.cli("worker", "worker", "echo", "--broker", broker, "--heartbeat", "0.2")
    submitted = run_cli("submit", "echo", SECRET, "--broker", broker, "--timeout", "5")
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    done = run_cli("fetch", "--wait", "--timeout", "30", request_id, "--broker", broker)
    assert done.returncode == 0 and done.stdout == f"{SECRET}\n".encode(), done.stderr
    assert Processes.terminate(dispatcher, timeout=15) == 0
    for path in tmp_path.glob("titanic.db*"):  # the database, its WAL and shared memory
        assert SECRET.encode() not in path.read_bytes(), path
    no_key = run_cli("status", request_id, *db)
    assert no_key.returncode == 7 and "give the store key" in one_line(no_key.stderr)
    with_key = run_cli("status", request_id, *db, env={"TITANIC_STORE_KEY": str(key)})
    assert with_key.returncode == 0 and "done" in with_key.stdout.decode(), with_key.stderr
    rotated = run_cli("db", "keygen", "--rotate", str(key))
    assert rotated.returncode == 0, rotated.stderr
    resealed = run_cli("db", "rekey", *db, "--store-key", str(key))
    assert resealed.returncode == 0 and "sealed 2 bodies" in resealed.stdout.decode()
    key.write_text(key.read_text().splitlines()[1] + "\n")  # only the new key left
    assert run_cli("status", request_id, *db, "--store-key", str(key)).returncode == 0
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    refused = run_cli("status", request_id, *db, "--store-key", str(bad))
    assert refused.returncode == 8 and "not a store key" in one_line(refused.stderr)
