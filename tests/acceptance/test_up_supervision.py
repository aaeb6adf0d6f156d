"""`titanic up` as its children see it: they stop when `up` dies however it dies, so the next
`up` finds its ports free; a child that cannot bind its address is not restarted; one environment
serves every command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from titanic_support import Processes, free_endpoint, free_port, run_cli, wait_until

from titanic.client.tsp import ReplyState, TitanicClient


@dataclass(frozen=True)
class Proc:
    """A process as /proc shows it; its start time tells it from a later process given the
    same pid."""

    pid: int
    start: int

    @staticmethod
    def stat(pid: int) -> list[str] | None:
        """The fields of /proc/PID/stat after the command name (state first), or None."""
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return text[text.rindex(")") + 2:].split()

    def running(self) -> bool:
        """Alive: not gone, not a zombie waiting to be reaped, not another process."""
        fields = Proc.stat(self.pid)
        return fields is not None and fields[0] not in "ZX" and int(fields[19]) == self.start


def children_of(parent: int) -> list[Proc]:
    """The processes whose parent is `parent`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = Proc.stat(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(Proc(int(entry.name), int(fields[19])))
    return found


@pytest.fixture
def orphans() -> Iterator[list[Proc]]:
    """Processes the test records; any still running at the end is killed (they are not
    ours to leave behind, whatever the test found)."""
    recorded: list[Proc] = []
    yield recorded
    for proc in recorded:
        if proc.running():
            os.kill(proc.pid, signal.SIGKILL)


def round_trip(broker: str, body: bytes) -> None:
    with TitanicClient(broker, timeout=2, retries=15) as titanic:
        request_id = titanic.submit("echo", body)
        fetched = titanic.wait(request_id, timeout=60)
    assert fetched.state is ReplyState.DONE and fetched.reply == [body]


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text


@pytest.mark.parametrize("dashboard", [False, True], ids=["demo", "demo-dashboard"])
def test_up_killed_leaves_no_children_and_starts_again_on_the_same_ports(
        procs: Processes, orphans: list[Proc], tmp_path: Path, dashboard: bool) -> None:
    if dashboard:
        pytest.importorskip("flask", reason="the dashboard extra is not installed")
    broker = free_endpoint()
    dashboard_port = free_port()
    argv = ["up", "--demo", "--bind", broker, "--db", f"sqlite:///{tmp_path / 'up.db'}"]
    if dashboard:
        argv += ["--dashboard", f"127.0.0.1:{dashboard_port}"]
    expected = 3 if dashboard else 2

    first = procs.cli("up-1", *argv)
    round_trip(broker, b"before the kill")
    if dashboard:
        wait_until(lambda: accepts_connections(dashboard_port), timeout=30,
                   message="the dashboard listening")
    wait_until(lambda: len(children_of(first.pid)) == expected, timeout=30,
               message=f"{expected} children of up")
    orphans.extend(children_of(first.pid))

    Processes.kill(first)  # SIGKILL: up stops nothing itself
    wait_until(lambda: not any(child.running() for child in orphans), timeout=30,
               interval=0.05, message="every child of the killed up gone")
    log = procs.log("up-1")
    assert log.count("titanic up (the parent process) is gone: stopping") == expected, log
    assert "broker stopped" in log  # the SIGTERM path: the hosted dispatcher drained
    assert "Traceback" not in log

    second = procs.cli("up-2", *argv)
    round_trip(broker, b"after the restart")
    if dashboard:
        wait_until(lambda: accepts_connections(dashboard_port), timeout=30,
                   message="the second dashboard listening")
    orphans.extend(children_of(second.pid))
    assert Processes.terminate(second, timeout=30) == 0
    assert "in use" not in procs.log("up-2")
    assert not any(child.running() for child in orphans)


def test_up_runs_in_an_environment_set_for_other_commands(procs: Processes,
                                                          tmp_path: Path) -> None:
    broker = free_endpoint()
    up = procs.cli("up", "up", "--demo", "--bind", broker, "--db",
                   f"sqlite:///{tmp_path / 'up.db'}",
                   env={"TITANIC_WORKER_BIND": free_endpoint(),  # another broker's
                        "TITANIC_SERVICE": "resize",  # for `titanic worker run`
                        "TITANIC_CURVE_ADMIN": str(tmp_path / "admin")})  # a CURVE broker's
    round_trip(broker, b"in a shared environment")
    assert Processes.terminate(up, timeout=30) == 0


def held_port() -> tuple[socket.socket, int]:
    """A port with a listening socket on it, as another program would hold it."""
    port = free_port()
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen(1)
    return sock, port


def exit_status(procs: Processes, orphans: list[Proc], proc: subprocess.Popen[bytes]) -> int:
    """The exit status of a `titanic up`; if it is still running after a minute, its children are
    recorded (to be killed) and the test fails."""
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        orphans.extend(children_of(proc.pid))
        raise AssertionError(f"up still running after 60 s:\n{procs.log('up')}") from None


def test_up_with_its_dashboard_on_a_port_in_use_exits_at_once(
        procs: Processes, orphans: list[Proc], tmp_path: Path) -> None:
    pytest.importorskip("flask", reason="the dashboard extra is not installed")
    holder, port = held_port()
    with holder:
        up = procs.cli("up", "up", "--demo", "--bind", free_endpoint(), "--dashboard",
                       f"127.0.0.1:{port}", "--db", f"sqlite:///{tmp_path / 'up.db'}")
        assert exit_status(procs, orphans, up) == 10
    assert (procs.log("up") == f"titanic: cannot bind 127.0.0.1:{port} for the dashboard: "
            "Address already in use\n")
    assert not (tmp_path / "up.db").exists()  # nothing started


def test_a_child_of_up_that_cannot_bind_is_not_restarted(procs: Processes, orphans: list[Proc],
                                                         tmp_path: Path) -> None:
    holder, port = held_port()
    with holder:
        # The broker inherits --metrics-bind from the environment: up does not check it first.
        up = procs.cli("up", "up", "--bind", free_endpoint(), "--db",
                       f"sqlite:///{tmp_path / 'up.db'}",
                       env={"TITANIC_METRICS_BIND": f"127.0.0.1:{port}"})
        assert exit_status(procs, orphans, up) == 10
    log = procs.log("up")
    assert f"titanic: cannot bind 127.0.0.1:{port} for metrics: Address already in use" in log
    assert "titanic: broker exited with status 10" in log
    assert log.count("started broker") == 1, log
    assert "Errno" not in log


def test_dashboard_on_a_port_in_use_is_one_line_naming_it() -> None:
    pytest.importorskip("flask", reason="the dashboard extra is not installed")
    holder, port = held_port()
    with holder:
        done = run_cli("dashboard", "--bind", f"127.0.0.1:{port}", "--broker", free_endpoint(),
                       timeout=60)
    assert done.returncode == 10
    assert (f"titanic: cannot bind 127.0.0.1:{port} for the dashboard: Address already in use"
            in one_line(done.stderr))


def test_a_broker_endpoint_in_use_is_one_line_naming_it() -> None:
    holder, port = held_port()
    with holder:
        done = run_cli("broker", "--bind", f"tcp://127.0.0.1:{port}", "--metrics-bind",
                       f"127.0.0.1:{free_port()}", timeout=60)
    assert done.returncode == 10
    assert (one_line(done.stderr)
            == f"titanic: cannot bind tcp://127.0.0.1:{port}: Address already in use\n")


@pytest.mark.parametrize("daemon", ["broker", "hosting broker", "dispatcher"])
def test_a_metrics_endpoint_in_use_is_one_line_naming_it(daemon: str, tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 't.db'}"]
    argv = {"broker": ["broker", "--bind", free_endpoint()],
            "hosting broker": ["broker", "--bind", free_endpoint(), "--titanic", *db],
            "dispatcher": ["dispatcher", "--broker", free_endpoint(), *db]}[daemon]
    holder, port = held_port()
    with holder:
        done = run_cli(*argv, "--metrics-bind", f"127.0.0.1:{port}", timeout=60)
    assert done.returncode == 10
    assert (one_line(done.stderr)
            == f"titanic: cannot bind 127.0.0.1:{port} for metrics: Address already in use\n")


def answers(broker: str) -> bool:
    """The broker answers mmi.service (404: nothing serves 'echo')."""
    done = run_cli("mmi", "echo", "--broker", broker, "--timeout", "0.5", "--retries", "0")
    return done.returncode == 4 and done.stdout == b"404\n"


def test_a_plain_broker_ignores_the_database_variable(procs: Processes, tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    shared = {"TITANIC_DATABASE_URL": f"sqlite:///{database}"}  # one EnvironmentFile for all
    broker = free_endpoint()
    plain = procs.cli("broker", "broker", "--bind", broker, env=shared)
    wait_until(lambda: answers(broker) or plain.poll() is not None, timeout=30,
               message="the broker answering")
    assert plain.poll() is None, procs.log("broker")
    assert Processes.terminate(plain) == 0
    assert not database.exists()  # a plain broker stores nothing


def test_a_plain_broker_given_db_on_its_command_line_is_a_usage_error(tmp_path: Path) -> None:
    done = run_cli("broker", "--bind", free_endpoint(), "--db", f"sqlite:///{tmp_path / 'a.db'}",
                   env={"TITANIC_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert done.returncode == 2
    assert "titanic: --db needs --titanic" in one_line(done.stderr)


def test_a_hosting_broker_takes_the_database_from_the_variable(procs: Processes,
                                                               tmp_path: Path) -> None:
    shared = {"TITANIC_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}"}
    broker = free_endpoint()
    hosting = procs.cli("broker", "broker", "--bind", broker,
                        env={**shared, "TITANIC_HOSTED": "1"})
    procs.cli("worker", "worker", "echo", "--broker", broker)
    round_trip(broker, b"stored in the shared database")
    assert Processes.terminate(hosting) == 0
    listed = run_cli("list", "--json", env=shared)  # the same environment, another command
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(b'"service": "echo"') == 1
