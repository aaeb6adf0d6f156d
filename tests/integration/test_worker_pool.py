"""WorkerPool on its own loop: several services, several connections each, batched handlers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack

from titanic_support import FAST_CONNECTION, free_endpoint, running, start_broker, wait_until

from titanic.broker import Broker
from titanic.client import PipelinedClient
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Frames
from titanic.settings import BrokerSettings
from titanic.worker.pool import PoolRequest, WorkerPool


def test_pool_answers_every_request_of_every_service() -> None:
    sizes: list[int] = []

    def upper(bodies: Sequence[Frames], callers: Sequence[Caller | None]) -> list[Frames]:
        assert callers == [None] * len(bodies)  # no identities asked for
        sizes.append(len(bodies))
        return [[frame.upper() for frame in body] for body in bodies]

    def count(bodies: Sequence[Frames], callers: Sequence[Caller | None]) -> list[Frames]:
        return [[str(len(body)).encode()] for body in bodies]

    with ExitStack() as stack:
        endpoint = start_broker(stack).bound[0]
        pool = WorkerPool(endpoint, {b"upper": (3, upper), b"count": (1, count)},
                          settings=FAST_CONNECTION)
        stack.enter_context(running(pool))
        with PipelinedClient(endpoint, depth=16, timeout=5, retries=1) as client:
            requests: list[tuple[str, list[bytes]]] = []
            for n in range(40):
                requests.append(("upper", [f"word {n}".encode()]))
                requests.append(("count", [b"a"] * (n % 4)))
            replies = client.request_many(requests)
    assert replies[0::2] == [[f"WORD {n}".encode()] for n in range(40)]
    assert replies[1::2] == [[str(n % 4).encode()] for n in range(40)]
    assert sum(sizes) == 40 and pool.requests_handled == 80


def test_requests_waiting_on_several_connections_reach_the_handler_as_one_batch() -> None:
    batches: list[list[bytes]] = []

    def upper(bodies: Sequence[Frames], callers: Sequence[Caller | None]) -> list[Frames]:
        batches.append([body[0] for body in bodies])
        return [[body[0].upper()] for body in bodies]

    with ExitStack() as stack:
        broker = start_broker(stack)
        endpoint = broker.bound[0]
        # Driven here, step by step, as the dispatcher drives its pool: no thread of its own.
        pool = WorkerPool(endpoint, {b"upper": (3, upper)}, settings=FAST_CONNECTION)
        stack.callback(pool.close)
        pool.open(time.monotonic())
        wait_until(lambda: broker.stats.workers_registered == 3, message="three connections")
        client = stack.enter_context(PipelinedClient(endpoint, depth=5, timeout=10, retries=0))
        for n in range(5):
            client.send("upper", [b"w%d" % n], n)
        # One request per connection (a new worker's credit is one), two waiting in the broker.
        wait_until(lambda: broker.stats.queued == 2, message="two requests queued")
        held: list[PoolRequest] = []
        deadline = time.monotonic() + 10
        while len(held) < 3 and time.monotonic() < deadline:
            ready, _ = pool.sockets.wait(0.1)
            held += pool.read(ready, time.monotonic())
        assert len({id(connection) for connection, _, _, _ in held}) == 3
        pool.serve(held, time.monotonic())
        assert len(batches) == 1 and len(batches[0]) == 3  # one call for the three
        done: list[int] = []
        while len(done) < 5 and time.monotonic() < deadline:
            ready, _ = pool.sockets.wait(0.05)
            pool.serve(pool.read(ready, time.monotonic()), time.monotonic())
            pool.upkeep(time.monotonic())
            done += [int(str(c.tag)) for c in client.poll(0.05) if c.error is None]
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert sorted(body for batch in batches for body in batch) == [b"w%d" % n for n in range(5)]


def _drive(pool: WorkerPool, until: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the pool's reads and upkeep, as the dispatcher does, until `until()` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "condition not met in time"
        ready, _ = pool.sockets.wait(0.02)
        pool.read(ready, time.monotonic())
        pool.upkeep(time.monotonic())


def test_a_pool_counts_losing_a_broker_it_had_heard_from_not_tries_at_a_silent_one() -> None:
    endpoint = free_endpoint()
    settings = BrokerSettings(heartbeat_interval=0.1)
    with ExitStack() as stack:
        pool = WorkerPool(endpoint, {b"svc": (2, None)}, settings=FAST_CONNECTION)
        stack.callback(pool.close)
        pool.open(time.monotonic())
        # Nothing listens yet: the connections fall silent and try again, and that is no loss.
        _drive(pool, lambda: sum(c.connects for c in pool.connections) >= 6)
        assert pool.broker_losses == 0
        with running(Broker(endpoint, settings)):
            _drive(pool, lambda: all(c.heard for c in pool.connections))
        # That broker stopped (it said DISCONNECT): each connection lost it once.
        restarted = Broker(endpoint, settings)
        with running(restarted):
            _drive(pool, lambda: restarted.stats.workers_registered == 2)
        assert pool.broker_losses == 2
