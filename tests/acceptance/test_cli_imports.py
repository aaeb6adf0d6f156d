"""The first hour with `titanic up`: client commands load neither SQLAlchemy nor psycopg (each
runs to its end in a subprocess, which then writes down the heavy modules it imported), and the
daemons' log lines say what happened in words."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from titanic_support import Processes, free_endpoint, run_cli, wait_until

#: Runs the titanic CLI's own entry point with the arguments after `-c SCRIPT`, then (at exit,
#: however the command ends) writes which of the watched modules were imported to $REPORT.
PROBE = """
import atexit, json, os, sys
WATCHED = ("sqlalchemy", "psycopg", "alembic", "titanic.store", "titanic.broker")
def _report():
    with open(os.environ["REPORT"], "w") as out:
        json.dump(sorted(m for m in WATCHED if m in sys.modules), out)
atexit.register(_report)
sys.argv[0] = "titanic"
from titanic_cli.main import main
main()
"""


def imported_by(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run `titanic ARGS` through PROBE: its exit status and the watched modules it imported."""
    report = tmp_path / "imports.json"
    report.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-P", "-c", PROBE, *args], capture_output=True,
                          timeout=60, env={**os.environ, **env, "REPORT": str(report)}, check=False)
    modules = json.loads(report.read_text())
    assert isinstance(modules, list)
    return done.returncode, modules


@pytest.fixture
def up(procs: Processes, tmp_path: Path) -> Iterator[dict[str, str]]:
    """`titanic up --demo` on SQLite; the environment that points commands at it."""
    endpoint = free_endpoint()
    env = {"TITANIC_BROKER": endpoint, "TITANIC_DATABASE_URL": str(tmp_path / "t.db")}
    procs.cli("up", "up", "--demo", "--bind", endpoint, env=env)
    wait_until(lambda: run_cli("mmi", "echo", "--timeout", "1", env=env).returncode == 0,
               timeout=60, message="titanic up serving echo")
    return env


def test_client_commands_import_neither_sqlalchemy_nor_psycopg(up: dict[str, str],
                                                               tmp_path: Path) -> None:
    submitted = run_cli("submit", "echo", "hello", env=up)
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    assert run_cli("fetch", "--wait", "--timeout", "30", request_id, env=up).returncode == 0
    for args, status in [
        (["submit", "echo", "x"], 0),
        (["submit", "echo", "x", "--json"], 0),
        (["fetch", request_id], 0),
        (["fetch", "--json", request_id], 0),
        (["close", request_id], 0),
        (["fetch", request_id], 4),
        (["call", "echo", "x"], 0),
        (["mmi", "echo"], 0),
        (["mmi", "nobody"], 4),
        (["info"], 0),
        (["info", "--json"], 0),
        (["--help"], 0),
        (["--version"], 0),
        (["submit", "--help"], 0),
        (["fetch", "not-a-uuid"], 2),
    ]:
        code, modules = imported_by(tmp_path, *args, env=up)
        assert code == status, args
        assert modules == [], f"titanic {' '.join(args)} imported {modules}"


def test_a_command_reading_sqlite_imports_sqlalchemy_but_not_psycopg(up: dict[str, str],
                                                                    tmp_path: Path) -> None:
    submitted = run_cli("submit", "echo", "hello", env=up)
    request_id = submitted.stdout.decode().strip()
    for args in (["status", request_id], ["list"]):
        code, modules = imported_by(tmp_path, *args, env=up)
        assert code == 0, args
        assert "sqlalchemy" in modules and "titanic.store" in modules  # the probe sees imports
        assert "psycopg" not in modules and "alembic" not in modules
        assert "titanic.broker" not in modules


def test_up_logs_what_happened_in_words(procs: Processes, tmp_path: Path) -> None:
    endpoint, database = free_endpoint(), tmp_path / "t.db"
    env = {"TITANIC_BROKER": endpoint, "TITANIC_DATABASE_URL": str(database)}
    up = procs.cli("up", "up", "--demo", "--bind", endpoint, env=env)
    wait_until(lambda: run_cli("mmi", "echo", "--timeout", "1", env=env).returncode == 0,
               timeout=60, message="titanic up serving echo")
    request_id = run_cli("submit", "echo", "hi", env=env).stdout.decode().strip()
    assert run_cli("fetch", "--wait", "--timeout", "30", request_id, env=env).returncode == 0
    assert Processes.terminate(up, timeout=30) == 0
    log = procs.log("up")
    for python in ("StoreIdentity(", "DispatcherStats(", "{'", "b'"):
        assert python not in log, log
    assert re.search(rf"store [0-9a-f]{{32}} at sqlite:///{re.escape(str(database))}\n", log), log
    assert "registered for 'echo' (7/MDP)" in log
    assert "hosted dispatcher stopped: dispatched 1, completed 1" in log
    assert re.search(r"broker stopped: messages \d+, requests \d+", log), log
