"""The CLI starts cheaply, runs as `python -m titanic`, and exits 130 on Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import click
import pytest
import zmq
from titanic_support import (
    CLI,
    FAST_BROKER,
    free_endpoint,
    recv_within,
    run_cli,
    running,
    start_broker,
    wait_until,
)

from titanic.worker import Worker
from titanic_cli.main import COMMANDS, load_command

IMPORTS_AFTER = """
import sys
from titanic_cli.main import cli
try:
    cli.main({args!r}, prog_name="titanic", standalone_mode=False)
finally:
    print(sorted(m for m in ("sqlalchemy", "zmq", "alembic") if m in sys.modules))
"""


@pytest.mark.parametrize(("args", "imported"), [
    (["--version"], "[]"), (["--help"], "[]"),
    (["worker", "--help"], "['zmq']"),  # a command imports what it needs, no more
    (["call", "--help"], "['zmq']"),
])
def test_version_and_help_import_neither_zmq_nor_sqlalchemy(args: list[str],
                                                            imported: str) -> None:
    done = subprocess.run([sys.executable, "-P", "-c", IMPORTS_AFTER.format(args=args)],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines()[-1] == imported


def test_every_listed_command_loads_under_its_name() -> None:
    for name in COMMANDS:
        command = load_command(name)
        assert isinstance(command, click.Command) and command.name == name


def test_python_dash_m_titanic_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-P", "-m", "titanic", "--version"],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"titanic, version ")
    unknown = subprocess.run([sys.executable, "-P", "-m", "titanic", "nonsense"],
                             capture_output=True, timeout=60, check=False)
    assert unknown.returncode == 2
    assert unknown.stderr == b"titanic: no such command 'nonsense'; see 'titanic --help'\n"


def _sigint_default() -> None:
    # A test run started in the background (`pytest &`) has SIGINT ignored, and children inherit
    # that: Python then takes no KeyboardInterrupt. A terminal's Ctrl-C finds it at its default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_with_one_line() -> None:
    endpoint = free_endpoint()
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)  # a broker that never answers
    router.linger = 0
    router.bind(endpoint)
    call = subprocess.Popen([*CLI, "call", "echo", "x", "--broker", endpoint, "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_sigint_default)  # noqa: PLW1509 - one signal() call
    try:
        recv_within(router, 60)  # the request arrived: the command is waiting for the reply
        # ...once it blocks in poll(): a signal landing just before that call is seen only when
        # the poll ends (a race of the test, not of a person pressing Ctrl-C).
        wait_until(lambda: "poll" in Path(f"/proc/{call.pid}/wchan").read_text(), timeout=60,
                   message="the command blocked in poll()")
        call.send_signal(signal.SIGINT)
        _, stderr = call.communicate(timeout=30)
        assert call.returncode == 130
        assert stderr.decode().strip() == "titanic: interrupted"
    finally:
        router.close(0)
        if call.poll() is None:
            call.kill()
            call.wait(10)


@pytest.fixture
def echo_broker() -> Iterator[str]:
    with ExitStack() as stack:
        server = start_broker(stack, replace(FAST_BROKER, heartbeat_interval=0.2))
        endpoint = server.bound[0]
        stack.enter_context(running(Worker(endpoint, "echo", lambda f: f,
                                           heartbeat_interval=0.2)))
        yield endpoint


def test_call_takes_stdin_files_and_json(echo_broker: str, tmp_path: Path) -> None:
    (tmp_path / "photo.bin").write_bytes(b"\xff\x00photo")
    done = run_cli("call", "echo", "-", f"@{tmp_path / 'photo.bin'}", "@@at", "plain",
                   "--broker", echo_broker, "--timeout", "10", input=b"from stdin")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"from stdin\n\xff\x00photo\n@at\nplain\n"
    as_json = run_cli("call", "echo", f"@{tmp_path / 'photo.bin'}", "--json",
                      "--broker", echo_broker, "--timeout", "10")
    assert json.loads(as_json.stdout) == {"service": "echo", "frames": ["/wBwaG90bw=="],
                                          "encoding": "base64"}
    missing = run_cli("call", "echo", f"@{tmp_path / 'nope'}", "--broker", echo_broker)
    assert missing.returncode == 2 and b"cannot read" in missing.stderr


def test_keygen_over_a_dangling_symlink_is_exit_8(tmp_path: Path) -> None:
    (tmp_path / "alice.key_secret").symlink_to(tmp_path / "nowhere")
    done = run_cli("keygen", "alice", "--dir", str(tmp_path))
    assert done.returncode == 8
    assert done.stderr.decode().count("\n") == 1 and b"exists: not overwriting" in done.stderr
    assert not (tmp_path / "alice.key").exists()
    assert not (tmp_path / "nowhere").exists()
