"""`titanic submit --in/--at/--priority`, and the scheduled state in `status`, `list` and
`info`, through the installed commands in subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from titanic_support import Processes, free_endpoint, run_cli

FAST_DISPATCHER = ["--heartbeat", "0.2", "--request-timeout", "2"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'titanic.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli(*args)


def test_a_request_submitted_in_an_hour_is_scheduled_everywhere(procs: Processes,
                                                                db_url: str) -> None:
    broker = free_endpoint()
    procs.broker(broker)
    procs.cli("dispatcher", "dispatcher", "--broker", broker, "--db", db_url, *FAST_DISPATCHER)
    submitted = _cli("submit", "--in", "1h", "--priority", "3", "--json", "report", "q",
                     "--broker", broker, "--timeout", "5")
    assert submitted.returncode == 0, submitted.stderr
    request_id = json.loads(submitted.stdout)["uuid"]
    now = _cli("submit", "report", "now", "--broker", broker, "--timeout", "5")
    assert now.returncode == 0, now.stderr

    status = _cli("status", "--json", request_id, "--db", db_url)
    fields = json.loads(status.stdout)
    assert (fields["state"], fields["priority"], fields["attempts"]) == ("scheduled", 3, 0)
    listed = _cli("list", "--state", "scheduled", "--json", "--db", db_url)
    assert [json.loads(line)["uuid"] for line in listed.stdout.splitlines()] == [request_id]
    pending = _cli("list", "--state", "pending", "--json", "--db", db_url)
    assert [json.loads(line)["uuid"] for line in pending.stdout.splitlines()] == [
        now.stdout.decode().strip()]
    info = _cli("info", "--json", "--broker", broker, "--timeout", "5")
    assert info.returncode == 0, info.stderr
    (row,) = json.loads(info.stdout)["services"]
    assert (row["pending"], row["scheduled"]) == (1, 1)


@pytest.mark.parametrize(("args", "words"), [
    (["--at", "2026-12-24T18:00:00"], b"no time zone"),
    (["--at", "Christmas"], b"ISO 8601"),
    (["--in", "soon"], b"duration"),
    (["--in", "5m", "--at", "2026-12-24T18:00:00Z"], b"not both"),
    (["--priority", "high"], b"priority"),
])
def test_a_bad_time_or_priority_is_one_line_and_exit_2(args: list[str], words: bytes) -> None:
    done = _cli("submit", *args, "echo", "x", "--broker", "tcp://127.0.0.1:1", "--timeout", "1")
    assert done.returncode == 2
    assert done.stderr.count(b"\n") == 1 and words in done.stderr, done.stderr


def test_cancel_says_what_it_was_and_exits_by_the_outcome(procs: Processes,
                                                          db_url: str) -> None:
    broker = free_endpoint()
    procs.broker(broker)
    procs.cli("dispatcher", "dispatcher", "--broker", broker, "--db", db_url, *FAST_DISPATCHER)
    submitted = _cli("submit", "--in", "1h", "report", "q", "--broker", broker, "--timeout", "5")
    request_id = submitted.stdout.decode().strip()
    cancelled = _cli("cancel", request_id, "--broker", broker, "--timeout", "5")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == b"cancelled (was scheduled)\n"
    fields = json.loads(_cli("status", "--json", request_id, "--db", db_url).stdout)
    assert fields["state"] == "cancelled"
    listed = _cli("list", "--state", "cancelled", "--json", "--db", db_url)
    assert [json.loads(line)["uuid"] for line in listed.stdout.splitlines()] == [request_id]
    fetched = _cli("fetch", request_id, "--broker", broker, "--timeout", "5")
    assert fetched.returncode == 5 and b"cancelled" in fetched.stderr
    unknown = _cli("cancel", "0" * 32, "--broker", broker, "--timeout", "5")
    assert unknown.returncode == 4 and unknown.stderr.count(b"\n") == 1, unknown.stderr
    info = json.loads(_cli("info", "--json", "--broker", broker, "--timeout", "5").stdout)
    assert info["services"][0]["cancelled"] == 1


def test_limit_sets_lists_clears_and_info_shows_it(procs: Processes, db_url: str) -> None:
    assert _cli("db", "upgrade", "--db", db_url).returncode == 0
    made = _cli("limit", "resize", "--max-in-flight", "2", "--rate", "20/s", "--db", db_url)
    assert made.returncode == 0, made.stderr
    listed = _cli("limit", "--json", "--db", db_url)
    assert [json.loads(line) for line in listed.stdout.splitlines()] == [
        {"service": "resize", "max_in_flight": 2, "rate": 20.0, "burst": 1.0}]
    broker = free_endpoint()
    procs.broker(broker)
    procs.cli("dispatcher", "dispatcher", "--broker", broker, "--db", db_url, *FAST_DISPATCHER)
    assert _cli("submit", "resize", "x", "--broker", broker, "--timeout", "5").returncode == 0
    info = _cli("info", "--broker", broker, "--timeout", "5")
    assert b"limit of resize: at most 2 in flight, 20/s" in info.stdout, info.stdout
    cleared = _cli("limit", "resize", "--clear", "--db", db_url)
    assert cleared.returncode == 0 and _cli("limit", "--json", "--db", db_url).stdout == b""
    again = _cli("limit", "resize", "--clear", "--db", db_url)
    assert again.returncode == 4 and again.stderr.count(b"\n") == 1


@pytest.mark.parametrize(("args", "words"), [
    (["resize"], b"--max-in-flight"),
    (["resize", "--rate", "fast"], b"rate"),
    (["resize", "--burst", "3", "--max-in-flight", "1"], b"--burst goes with --rate"),
    (["--clear"], b"SERVICE"),
    (["resize", "--clear", "--rate", "1/s"], b"--clear"),
])
def test_a_bad_limit_is_one_line_and_exit_2(args: list[str], words: bytes,
                                            tmp_path: Path) -> None:
    done = _cli("limit", *args, "--db", str(tmp_path / "none.db"))
    assert done.returncode == 2
    assert done.stderr.count(b"\n") == 1 and words in done.stderr, done.stderr
