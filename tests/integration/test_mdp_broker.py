"""Broker, workers and clients on loopback, in threads: every dialect, and across dialects."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from titanic_support import (
    FAST_BROKER,
    nothing_within,
    raw_dealer,
    recv_within,
    replayable_seed,
    running,
    start_broker,
    start_worker,
    wait_until,
)

from titanic.broker import Broker
from titanic.client import Client, PipelinedClient
from titanic.errors import BrokerRefusedError, TitanicTimeoutError
from titanic.protocol.mdp import Dialect, Frames
from titanic.settings import BrokerSettings
from titanic.worker import Worker


def client(stack: ExitStack, endpoint: str, dialect: Dialect = Dialect.MDP01,
           timeout: float = 3.0, retries: int = 1) -> Client:
    made = Client(endpoint, dialect=dialect, timeout=timeout, retries=retries)
    stack.callback(made.close)
    return made


def streaming(frames: Frames) -> Iterator[list[bytes]]:
    """A handler streaming three parts."""
    yield [b"part-1"]
    yield [b"part-2", b""]
    yield [b"final", *frames]


@pytest.mark.parametrize("worker_dialect", list(Dialect))
@pytest.mark.parametrize("client_dialect", list(Dialect))
def test_every_client_dialect_reaches_every_worker_dialect(
        stack: ExitStack, client_dialect: Dialect, worker_dialect: Dialect) -> None:
    endpoint = start_broker(stack).bound[0]
    start_worker(stack, endpoint, "echo", lambda f: [b"got", *f], dialect=worker_dialect)
    reply = client(stack, endpoint, client_dialect).request("echo", b"a", b"", b"c")
    assert reply == [b"got", b"a", b"", b"c"]


def test_seven_mdp_client_gets_one_reply_holding_all_partials(stack: ExitStack) -> None:
    endpoint = start_broker(stack).bound[0]
    start_worker(stack, endpoint, "stream", streaming, dialect=Dialect.MDP02)
    parts = client(stack, endpoint, Dialect.MDP01).request_parts("stream", b"x")
    assert parts == [[b"part-1", b"part-2", b"", b"final", b"x"]]


@pytest.mark.parametrize("client_dialect", [Dialect.MDP02, Dialect.MAJORTOMO])
def test_eighteen_mdp_client_gets_partials_then_final(stack: ExitStack,
                                                      client_dialect: Dialect) -> None:
    endpoint = start_broker(stack).bound[0]
    start_worker(stack, endpoint, "stream", streaming, dialect=Dialect.MDP02)
    parts = client(stack, endpoint, client_dialect).request_parts("stream", b"x")
    assert parts == [[b"part-1"], [b"part-2", b""], [b"final", b"x"]]


def test_eighteen_mdp_client_served_by_seven_mdp_worker_gets_a_final(stack: ExitStack) -> None:
    endpoint = start_broker(stack).bound[0]
    start_worker(stack, endpoint, "echo", lambda f: f, dialect=Dialect.MDP01)
    assert client(stack, endpoint, Dialect.MDP02).request_parts("echo", b"x") == [[b"x"]]


def test_request_queued_before_a_worker_arrives_is_served(stack: ExitStack) -> None:
    broker = start_broker(stack)
    endpoint = broker.bound[0]
    answers: list[Frames] = []
    caller = threading.Thread(target=lambda: answers.append(
        Client(endpoint, timeout=10, retries=0).request("late", b"hello")))
    caller.start()
    wait_until(lambda: broker.stats.queued == 1, message="request queued")
    start_worker(stack, endpoint, "late", lambda f: [b"served", *f])
    caller.join(10)
    assert answers == [[b"served", b"hello"]]


def test_total_queue_bound_answers_503(stack: ExitStack) -> None:
    settings = BrokerSettings(heartbeat_interval=0.1, total_queue_limit=1)
    broker = start_broker(stack, settings)
    endpoint = broker.bound[0]
    with raw_dealer(endpoint) as first, raw_dealer(endpoint) as second:
        first.send_multipart([b"", b"MDPC01", b"one", b"x"])
        wait_until(lambda: broker.stats.queued == 1, message="one request queued")
        second.send_multipart([b"", b"MDPC01", b"two", b"y"])
        assert recv_within(second) == [b"", b"MDPC01", b"two", b"503",
                                        b"the broker's queues are full (limit 1 in all): "
                                        b"retry later"]
        assert nothing_within(first, 0.1)
    assert broker.stats.rejected_requests == 1


def test_mmi_service_follows_live_workers(stack: ExitStack) -> None:
    broker = start_broker(stack)
    endpoint = broker.bound[0]
    asker = client(stack, endpoint)
    assert asker.request("mmi.service", b"echo") == [b"404"]
    worker = Worker(endpoint, "echo", lambda f: f, heartbeat_interval=0.1)
    with running(worker):
        wait_until(lambda: asker.request("mmi.service", b"echo") == [b"200"])
    assert asker.request("mmi.nonsense", b"echo") == [b"501"]
    wait_until(lambda: asker.request("mmi.service", b"echo") == [b"404"],
               message="404 after the last worker left")


def test_silent_worker_is_expired_and_mmi_says_404(stack: ExitStack) -> None:
    broker = start_broker(stack)
    endpoint = broker.bound[0]
    asker = client(stack, endpoint)
    with raw_dealer(endpoint) as silent:
        silent.send_multipart([b"", b"MDPW01", b"\x01", b"mute"])
        wait_until(lambda: asker.request("mmi.service", b"mute") == [b"200"])
        wait_until(lambda: broker.stats.workers_expired == 1, timeout=5,
                   message="silent worker expired")
        assert asker.request("mmi.service", b"mute") == [b"404"]


def test_eighteen_mdp_violation_gets_disconnect_in_its_dialect(stack: ExitStack) -> None:
    endpoint = start_broker(stack, BrokerSettings(heartbeat_interval=5)).bound[0]
    with raw_dealer(endpoint) as peer:
        peer.send_multipart([b"MDPW02", b"\x04", b"client", b"", b"reply"])
        assert recv_within(peer) == [b"MDPW02", b"\x06"]


def test_malformed_flood_leaves_the_broker_serving(stack: ExitStack) -> None:
    broker = start_broker(stack)
    endpoint = broker.bound[0]
    start_worker(stack, endpoint, "echo", lambda f: f)
    rng = random.Random(replayable_seed("flood", "TITANIC_FLOOD_SEED"))
    headers = [b"", b"MDPC01", b"MDPW01", b"MDPC02", b"MDPW02", b"\x01", b"\x03", b"\x09", b"svc"]
    with raw_dealer(endpoint) as attacker:
        for _ in range(3000):
            frames = [rng.choice(headers) if rng.random() < 0.6
                      else rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 7))]
            attacker.send_multipart(frames)
        assert client(stack, endpoint).request("echo", b"still here") == [b"still here"]
        wait_until(lambda: broker.stats.messages >= 3000, message="flood handled")
    assert broker.stats.malformed > 1000


def test_pipelined_replies_out_of_order_are_matched(stack: ExitStack) -> None:
    endpoint = start_broker(stack).bound[0]

    def sleepy(frames: Frames) -> Frames:
        time.sleep(int(frames[0]) / 1000)
        return [b"re:" + frames[0]]

    for _ in range(4):
        start_worker(stack, endpoint, "sleepy", sleepy)
    delays = [str(d).encode() for d in [40, 1, 25, 3, 30, 2, 15, 0] * 4]
    order: list[int] = []
    with PipelinedClient(endpoint, depth=8, timeout=5, retries=0) as pipe:
        for completion in pipe.run(("sleepy", [d]) for d in delays):
            assert completion.error is None
            assert isinstance(completion.tag, int)
            assert completion.reply == [b"re:" + delays[completion.tag]]
            order.append(completion.tag)
    assert sorted(order) == list(range(len(delays)))
    assert order != list(range(len(delays))), "replies came in order: the test proved nothing"


def test_pipelined_client_opens_only_the_sockets_its_load_keeps_busy(stack: ExitStack) -> None:
    endpoint = start_broker(stack).bound[0]
    start_worker(stack, endpoint, "echo", lambda f: f)
    with PipelinedClient(endpoint, depth=64, timeout=5, retries=0) as pipe:
        assert pipe.sockets_opened == 0 and pipe.free_slots == 64
        for n in range(5):  # one at a time: the same socket each time
            pipe.send("echo", [str(n).encode()], n)
            assert [c.reply for c in pipe.poll(5)] == [[str(n).encode()]]
        assert pipe.sockets_opened == 1
        replies = [c.reply for c in pipe.run(("echo", [b"x"]) for _ in range(100))]
        assert replies == [[b"x"]] * 100
        assert pipe.sockets_opened == 64 and pipe.free_slots == 64


def test_pipelined_timeout_retries_on_new_sockets_then_fails(stack: ExitStack) -> None:
    endpoint = start_broker(stack).bound[0]
    started = time.monotonic()
    with PipelinedClient(endpoint, depth=2, timeout=0.2, retries=2) as pipe:
        results = list(pipe.run([("nobody", [b"x"])] * 2))
    assert all(isinstance(r.error, TitanicTimeoutError) for r in results)
    assert "after 3 attempt(s)" in str(results[0].error)
    assert time.monotonic() - started >= 0.6


def test_sync_client_timeout_is_clear_and_it_recovers(stack: ExitStack) -> None:
    broker = start_broker(stack)
    endpoint = broker.bound[0]
    asker = client(stack, endpoint, timeout=0.2, retries=1)
    with pytest.raises(TitanicTimeoutError, match=r"'later'.*after 2 attempt\(s\) of 0.2 s"):
        asker.request("later", b"x")
    start_worker(stack, endpoint, "later", lambda f: f)
    assert asker.request("later", b"y", timeout=3) == [b"y"]


def test_stop_disconnects_workers(stack: ExitStack) -> None:
    broker = Broker("tcp://127.0.0.1:0", FAST_BROKER)
    endpoint = broker.bind()[0]
    with raw_dealer(endpoint) as worker:
        with running(broker):
            worker.send_multipart([b"", b"MDPW01", b"\x01", b"svc"])
            wait_until(lambda: broker.has_workers(b"svc"))
        while True:  # heartbeats may come first
            frames = recv_within(worker, 2)
            if frames != [b"", b"MDPW01", b"\x04"]:
                break
        assert frames == [b"", b"MDPW01", b"\x05"]
        assert nothing_within(worker)


def test_service_name_counts_toward_the_request_size_limit(stack: ExitStack) -> None:
    settings = BrokerSettings(heartbeat_interval=0.1, max_request_size=1000)
    broker = start_broker(stack, settings)
    endpoint = broker.bound[0]
    start_worker(stack, endpoint, "n" * 200, lambda f: f)
    asker = client(stack, endpoint, retries=0)
    with pytest.raises(BrokerRefusedError) as refused:
        asker.request("n" * 200, b"x" * 801)
    assert (refused.value.code, refused.value.reason) == (
        413, "request of 1001 bytes exceeds the broker's limit of 1000 bytes")
    assert asker.request("n" * 200, b"x" * 800) == [b"x" * 800]
    assert broker.stats.oversized_requests == 1


def test_overlong_service_names_are_refused_not_queued(stack: ExitStack) -> None:
    broker = start_broker(stack)
    endpoint = broker.bound[0]
    start_worker(stack, endpoint, "echo", lambda f: f)
    asker = client(stack, endpoint, retries=0)
    for _ in range(10):
        with pytest.raises(BrokerRefusedError,
                           match="413 service name of 3145728 bytes exceeds the limit of 255"):
            asker.request("s" * (3 * 1024 * 1024), b"x")
    with pytest.raises(BrokerRefusedError,
                       match="413 service name of 256 bytes exceeds the limit of 255 bytes"):
        asker.request("s" * 256, b"x")
    assert asker.request("echo", b"still served") == [b"still served"]
    assert broker.stats.oversized_requests == 11
    assert broker.stats.queued == 0


def test_worker_with_an_overlong_service_name_is_disconnected(stack: ExitStack) -> None:
    broker = start_broker(stack)
    endpoint = broker.bound[0]
    with raw_dealer(endpoint) as sock:
        sock.send_multipart([b"", b"MDPW01", b"\x01", b"w" * 256])
        assert recv_within(sock) == [b"", b"MDPW01", b"\x05"]
    assert broker.stats.workers_registered == 0
