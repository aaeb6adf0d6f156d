"""`titanic worker run/echo --bind` and `titanic call --freelance`: brokerless through the CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

from titanic_support import CLI, Processes, free_endpoint, run_cli, wait_until

HANDLERS = '''
def shout(text: bytes) -> str:
    return text.decode().upper() + "!"
'''


def _answers(*args: str) -> bool:
    return run_cli("call", "--timeout", "0.5", "--retries", "0", *args).returncode == 0


def test_call_freelance_reaches_worker_run_and_worker_echo(procs: Processes,
                                                          tmp_path: Path) -> None:
    (tmp_path / "loud.py").write_text(textwrap.dedent(HANDLERS))
    run_ep, echo_ep = free_endpoint(), free_endpoint()
    procs.start("run", [*CLI, "worker", "run", "loud:shout", "--service", "shout", "--bind",
                        run_ep], cwd=tmp_path)
    procs.cli("echo", "worker", "echo", "--bind", echo_ep)
    servers = f"{run_ep},{echo_ep}"
    wait_until(lambda: _answers("--freelance", run_ep, "shout", "x")
               and _answers("--freelance", echo_ep, "echo", "x"), 30,
               message="the freelance servers answering")
    shouted = run_cli("call", "--freelance", servers, "shout", "hello")
    echoed = run_cli("call", "--freelance", servers, "echo", "a", "b")
    assert (shouted.returncode, shouted.stdout) == (0, b"HELLO!\n")
    assert (echoed.returncode, echoed.stdout) == (0, b"a\nb\n")


def test_worker_run_serves_a_broker_and_freelance_clients_at_once(procs: Processes,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "loud.py").write_text(textwrap.dedent(HANDLERS))
    broker, bind = free_endpoint(), free_endpoint()
    procs.broker(broker)
    worker = procs.start("run", [*CLI, "worker", "run", "loud:shout", "--service", "shout",
                                 "--broker", broker, "--bind", bind], cwd=tmp_path)
    wait_until(lambda: _answers("--broker", broker, "shout", "x"), 30,
               message="the worker registered with the broker")
    through_broker = run_cli("call", "--broker", broker, "shout", "one")
    direct = run_cli("call", "--freelance", bind, "shout", "two")
    assert (through_broker.returncode, through_broker.stdout) == (0, b"ONE!\n")
    assert (direct.returncode, direct.stdout) == (0, b"TWO!\n")
    assert Processes.terminate(worker) == 0  # SIGTERM ends both, cleanly


def test_advertise_names_the_endpoint_clients_use(procs: Processes) -> None:
    endpoint = free_endpoint()
    port = endpoint.rsplit(":", 1)[1]
    procs.cli("echo", "worker", "echo", "--bind", f"tcp://*:{port}", "--advertise", endpoint)
    wait_until(lambda: _answers("--freelance", endpoint, "echo", "x"), 30,
               message="the server answering at its advertised endpoint")


def test_call_freelance_with_no_live_server_is_one_line_and_exit_6() -> None:
    done = run_cli("call", "--freelance", f"{free_endpoint()},{free_endpoint()}",
                   "--timeout", "0.3", "--retries", "0", "echo", "x")
    assert done.returncode == 6 and done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and "no server answered a PING" in lines[0]


def test_call_freelance_unknown_service_is_exit_4(procs: Processes) -> None:
    endpoint = free_endpoint()
    server = procs.cli("echo", "worker", "echo", "--bind", endpoint)
    wait_until(lambda: _answers("--freelance", endpoint, "echo", "x"), 30,
               message="the freelance server answering")
    done = run_cli("call", "--freelance", endpoint, "nope", "x")
    assert Processes.terminate(server) == 0
    assert done.returncode == 4
    assert done.stderr.decode().splitlines() == [
        f"titanic: the server refused the request for 'nope': 404 no service 'nope' at "
        f"{endpoint}"]


def test_bind_errors_are_one_line() -> None:
    wildcard = run_cli("worker", "echo", "--bind", "tcp://*:5999")
    both = run_cli("call", "--freelance", free_endpoint(), "--broker", free_endpoint(), "echo")
    assert wildcard.returncode == 2 and len(wildcard.stderr.splitlines()) == 1
    assert b"--advertise" in wildcard.stderr
    assert both.returncode == 2 and len(both.stderr.splitlines()) == 1
