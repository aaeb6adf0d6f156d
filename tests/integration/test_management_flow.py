"""`titanic info`, `retry --state` and `purge` against a running broker and dispatcher: the
client reaches the store only through the broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from titanic_support import FAST_CONNECTION, run_cli, running, wait_until

from titanic.broker import Broker
from titanic.client import Client
from titanic.client.manage import ManagementClient
from titanic.client.tsp import TitanicClient
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.protocol import mmi
from titanic.settings import BrokerSettings
from titanic.store import RequestStatus, Store, open_store
from titanic.worker import Worker, echo_handler


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    return sqlite_store


@pytest.fixture
def dispatcher(broker: str, store: Store) -> Iterator[Dispatcher]:
    settings = DispatcherSettings(broker=broker, connection=FAST_CONNECTION)
    with running(Dispatcher(store, settings)) as d:
        wait_until(lambda: d.health()[0], message="dispatcher serving")  # type: ignore[attr-defined]
        yield d  # type: ignore[misc]


def test_broker_answers_mmi_broker_with_its_facts_and_other_mmi_names_501(broker: str) -> None:
    with ExitStack() as stack:
        stack.enter_context(running(Worker(broker, "echo", echo_handler, heartbeat_interval=0.1)))
        client = stack.enter_context(Client(broker))
        wait_until(lambda: client.request(mmi.SERVICE, b"echo") == [mmi.FOUND],
                   message="worker registered")
        facts = mmi.parse_facts(client.request(mmi.BROKER))
        assert client.request(b"mmi.nonesuch") == [mmi.NOT_IMPLEMENTED]
    assert facts is not None
    assert facts["services"]["echo"] == {"workers": 1, "queued": 0}
    assert facts["version"] and facts["uptime_s"] >= 0


def test_info_shows_each_service_with_counts_workers_and_who_answers(
        broker: str, store: Store, dispatcher: Dispatcher) -> None:
    with ExitStack() as stack:
        stack.enter_context(running(Worker(broker, "echo", echo_handler, heartbeat_interval=0.1)))
        titanic = stack.enter_context(TitanicClient(broker, timeout=2.0, retries=3))
        done = titanic.submit("echo", b"hi")
        assert titanic.wait(done, 10).reply == [b"hi"]
        titanic.submit("nobody", b"1")
        titanic.submit("nobody", b"2")
        with ManagementClient(broker) as client:
            view = client.info(window=60)
    rows = {row["service"]: row for row in view["services"]}
    assert set(rows) == {"echo", "nobody"}  # titanic.* services are left out
    assert rows["echo"]["done"] == 1 and rows["echo"]["workers"] == 1
    assert rows["echo"]["completed_per_s"] == pytest.approx(1 / 60)
    assert rows["nobody"]["pending"] == 2 and rows["nobody"]["workers"] == 0
    assert rows["nobody"]["oldest_pending_age_s"] >= 0
    assert view["dispatchers_serving"] == 1
    assert view["dispatcher"]["stats"]["completed"] == 1
    assert view["brokers"][0]["endpoint"] == broker


def test_cli_info_retry_and_purge_through_the_broker(broker: str, store: Store,
                                                     dispatcher: Dispatcher) -> None:
    failed = [store.submit("resize", [b"x"]) for _ in range(2)] + [store.submit("mail", [b"y"])]
    for request_id in failed:
        assert store.fail(request_id, "ValueError: bad input")
    done = store.submit("mail", [b"z"])
    store.complete(done, [b"ok"])
    env = {"TITANIC_BROKER": broker}

    shown = run_cli("info", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    rows = {row["service"]: row for row in json.loads(shown.stdout)["services"]}
    assert rows["resize"]["failed"] == 2 and rows["mail"]["done"] == 1
    text = run_cli("info", env=env)
    assert text.returncode == 0 and b"resize" in text.stdout and b"FAILED" in text.stdout

    dry = run_cli("retry", "--state", "failed", "--service", "resize", "--dry-run", env=env)
    assert dry.stdout == b"would retry 2 failed request(s) of 'resize'\n", dry.stderr
    assert store.stats().by_status()[RequestStatus.FAILED] == 3
    retried = run_cli("retry", "--state", "failed", "--service", "resize", env=env)
    assert retried.stdout == b"retried 2 failed request(s) of 'resize'\n", retried.stderr
    assert store.stats().counts[("resize", RequestStatus.PENDING)] == 2

    purged = run_cli("purge", "--state", "done", "--older-than", "1d", env=env)
    assert purged.stdout == b"purged 0 done request(s)\n", purged.stderr
    purged = run_cli("purge", "--state", "done", "--older-than", "0s", env=env)
    assert purged.stdout == b"purged 1 done request(s)\n", purged.stderr
    assert store.get(done) is None

    both = run_cli("retry", failed[2], "--state", "failed", env=env)
    assert both.returncode == 2 and b"not both" in both.stderr
    bad = run_cli("purge", "--state", "done", "--older-than", "soon", env=env)
    assert bad.returncode == 2 and b"not a duration" in bad.stderr


def test_info_without_a_dispatcher_says_which_piece_is_missing(broker: str) -> None:
    shown = run_cli("info", "--timeout", "0.5", "--retries", "0",
                    env={"TITANIC_BROKER": broker})
    assert shown.returncode == 6
    assert b"no dispatcher serves titanic.manage" in shown.stderr


def test_info_with_two_brokers_lists_both_and_survives_one_gone(sqlite_store: Store) -> None:
    brokers = [Broker("tcp://127.0.0.1:0", BrokerSettings(heartbeat_interval=0.1,
                                                          heartbeat_liveness=5))
               for _ in range(2)]
    endpoints = [broker.bind()[0] for broker in brokers]
    with ExitStack() as stack:
        first = stack.enter_context(ExitStack())
        first.enter_context(running(brokers[0]))
        stack.enter_context(running(brokers[1]))
        dispatcher = Dispatcher(sqlite_store, DispatcherSettings(broker=",".join(endpoints),
                                                                 connection=FAST_CONNECTION))
        stack.enter_context(running(dispatcher))
        wait_until(lambda: dispatcher.health()[0], message="dispatcher serving")
        stack.enter_context(running(Worker(endpoints, "echo", echo_handler,
                                           heartbeat_interval=0.1)))
        client = stack.enter_context(ManagementClient(endpoints, timeout=1.0, retries=1))
        wait_until(lambda: all(f["services"].get("echo", {}).get("workers") == 1
                               for f in client.broker_facts()), message="worker on both")
        view = client.info()
        assert [b["endpoint"] for b in view["brokers"]] == endpoints
        assert view["dispatchers_serving"] == 1
        assert {row["service"]: row["workers"] for row in view["services"]} == {"echo": 1}
        first.close()  # the first broker is gone for good
        view = client.info()
        assert "error" in view["brokers"][0] and "error" not in view["brokers"][1]
        assert view["services"][0]["workers"] == 1


def test_info_lists_every_dispatcher_serving(broker: str, sqlite_url: str) -> None:
    stores = [open_store(sqlite_url) for _ in range(2)]
    with ExitStack() as stack:
        for store in stores:
            stack.callback(store.close_store)
            settings = DispatcherSettings(broker=broker, connection=FAST_CONNECTION)
            dispatcher = stack.enter_context(running(Dispatcher(store, settings)))
            wait_until(lambda d=dispatcher: d.health()[0],  # type: ignore[misc]
                       message="dispatcher serving")
        client = stack.enter_context(ManagementClient(broker))
        view = client.info()
    assert view["dispatchers_serving"] == 2
    assert len({d["instance"] for d in view["dispatchers"]}) == 2
