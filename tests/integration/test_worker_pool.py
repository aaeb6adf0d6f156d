"""WorkerPool on its own loop: several services, several connections each, batched handlers."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

from titanic_support import running

from titanic.broker import Broker
from titanic.client import PipelinedClient
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Frames
from titanic.settings import BrokerSettings
from titanic.worker_connection import ConnectionSettings
from titanic.worker_pool import WorkerPool

FAST = ConnectionSettings(heartbeat_interval=0.1, liveness=5, reconnect_initial=0.05)


def test_pool_answers_every_request_of_every_service_in_batches() -> None:
    sizes: list[int] = []

    def upper(bodies: Sequence[Frames], callers: Sequence[Caller | None]) -> list[Frames]:
        assert callers == [None] * len(bodies)  # no identities asked for
        sizes.append(len(bodies))
        return [[frame.upper() for frame in body] for body in bodies]

    def count(bodies: Sequence[Frames], callers: Sequence[Caller | None]) -> list[Frames]:
        return [[str(len(body)).encode()] for body in bodies]

    with ExitStack() as stack:
        broker = Broker("tcp://127.0.0.1:0", BrokerSettings(heartbeat_interval=0.1))
        endpoint = broker.bind()[0]
        stack.enter_context(running(broker))
        pool = WorkerPool(endpoint, {b"upper": (3, upper), b"count": (1, count)}, settings=FAST)
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
