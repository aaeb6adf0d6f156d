"""The commands with several brokers: lists in options and variables, --key, one store."""

from __future__ import annotations

from pathlib import Path

from titanic_support import Processes, free_endpoint, run_cli, wait_until

FAST = ["--heartbeat", "0.2"]


def test_two_brokers_from_options_and_variables(procs: Processes, tmp_path: Path) -> None:
    brokers = [free_endpoint(), free_endpoint()]
    for n, endpoint in enumerate(brokers):
        procs.cli(f"broker{n}", "broker", "--bind", endpoint, *FAST)
    db = f"sqlite:///{tmp_path / 'titanic.db'}"
    procs.cli("dispatcher", "dispatcher", "--db", db, *FAST,
              env={"TITANIC_BROKER": ",".join(brokers)})
    procs.cli("worker", "worker", "echo", "--broker", brokers[0], "--broker", brokers[1], *FAST)
    dead = free_endpoint()
    # The first endpoint answers nothing: the command fails over to a live broker.
    submit = ["submit", "echo", "hello", "--key", "order-7", "--timeout", "1",
              "--broker", f"{dead},{brokers[1]}"]
    first = run_cli(*submit)
    assert first.returncode == 0, first.stderr
    again = run_cli(*submit)
    assert again.stdout == first.stdout  # the same key: the same request
    request_id = first.stdout.decode().strip()
    fetched = run_cli("fetch", "--wait", "--timeout", "30", request_id,
                      env={"TITANIC_BROKER": brokers[0]})
    assert fetched.returncode == 0 and fetched.stdout == b"hello\n", fetched.stderr
    listed = run_cli("list", "--db", db)
    assert listed.stdout.count(b"echo") == 1

    # A second dispatcher on another database refuses, naming both stores.
    wait_until(lambda: run_cli("mmi", "titanic.store", "--broker", brokers[1]).returncode == 0,
               timeout=20, message="titanic.store served")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    refused = run_cli("dispatcher", "--db", other, "--broker", brokers[1], *FAST, timeout=60)
    assert refused.returncode == 7
    last = refused.stderr.splitlines()[-1]  # a daemon logs its start-up before it
    assert b"Traceback" not in refused.stderr and last.startswith(b"titanic: ")
    assert b"already serving at" in last and b"other.db" in last and b"titanic.db" in last


def test_an_empty_broker_list_and_a_bad_key_are_usage_errors() -> None:
    no_broker = run_cli("call", "echo", "x", "--broker", " , ")
    assert no_broker.returncode == 2 and b"no broker endpoint" in no_broker.stderr
    long_key = run_cli("submit", "echo", "x", "--key", "k" * 256)
    assert long_key.returncode == 2 and b"--key" in long_key.stderr
