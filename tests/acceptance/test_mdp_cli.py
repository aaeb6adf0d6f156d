"""`titanic broker`, `worker echo`, `call` and `mmi` as a user runs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from titanic_support import Processes, free_endpoint, run_cli, wait_until


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    procs = Processes(tmp_path)
    endpoint = free_endpoint()
    try:
        procs.broker(endpoint)
        procs.cli("worker", "worker", "echo", "--broker", endpoint, "--heartbeat", "0.2")
        wait_until(lambda: run_cli("mmi", "echo", "--broker", endpoint).returncode == 0,
                   timeout=20, interval=0.1, message="echo worker registered")
        yield endpoint
    finally:
        procs.close()


def test_call_prints_each_reply_frame(broker: str) -> None:
    done = run_cli("call", "echo", "a", "b c", "--broker", broker)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"a\nb c\n"


def test_call_timeout_is_one_line_and_exit_6(broker: str) -> None:
    done = run_cli("call", "nobody", "x", "--broker", broker, "--timeout", "0.2", "--retries", "0")
    assert done.returncode == 6
    assert done.stderr.count(b"\n") == 1 and done.stderr.startswith(b"titanic: no reply")


def test_mmi_prints_200_or_404(broker: str) -> None:
    found = run_cli("mmi", "echo", "--broker", broker)
    assert (found.returncode, found.stdout) == (0, b"200\n")
    missing = run_cli("mmi", "nobody", "--broker", broker)
    assert missing.returncode == 4 and missing.stdout == b"404\n"


@pytest.mark.parametrize("command", [["broker"], ["worker", "echo"], ["call"], ["mmi"],
                                     ["submit"], ["fetch"], ["close"], ["status"], ["list"],
                                     ["retry"], ["up"], ["dispatcher"], ["db", "upgrade"]])
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    shown = run_cli(*command, "--help")
    assert shown.returncode == 0
    assert b"Example" in shown.stdout
