"""Worker credit through real sockets: a slow worker is given one request at a time.

How credit grows for a quick worker is unit-tested on the core (tests/unit/test_broker_core.py),
where the clock is ours; here a timing margin would make it flaky on a loaded machine.

The worker here is a bare DEALER speaking 7/MDP by hand, so the test sees exactly when the broker
hands it each request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import zmq
from titanic_support import raw_dealer, recv_within, start_broker

from titanic.client import PipelinedClient
from titanic.settings import BrokerSettings

# Heartbeats every 10 s; the broker still probes a worker holding a request (every 0.1 s), so the
# watch below skips heartbeats and looks for requests only.
SETTINGS = BrokerSettings(heartbeat_interval=10.0, request_ttl=30, worker_prefetch=8,
                          prefetch_wait=0.005)


@pytest.fixture
def endpoint() -> Iterator[str]:
    with ExitStack() as stack:
        yield start_broker(stack, SETTINGS).bound[0]


def _register(sock: zmq.Socket[bytes], service: bytes) -> None:
    sock.send_multipart([b"", b"MDPW01", b"\x01", service])


def _next_request(sock: zmq.Socket[bytes], timeout: float = 5.0) -> list[bytes]:
    """The next REQUEST (heartbeats skipped)."""
    while True:
        frames = recv_within(sock, timeout)
        if frames[2] == b"\x02":
            return frames


def _no_request_within(sock: zmq.Socket[bytes], timeout: float) -> bool:
    """True if no REQUEST arrives within `timeout` seconds (heartbeats are skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not sock.poll(max(1, int(left * 1000))):
            return True
        if sock.recv_multipart()[2] == b"\x02":
            return False
    return True


def _reply(sock: zmq.Socket[bytes], request: list[bytes]) -> None:
    client, body = request[3], request[5:]
    sock.send_multipart([b"", b"MDPW01", b"\x03", client, b"", *body])


def test_slow_worker_is_given_one_request_at_a_time(endpoint: str) -> None:
    with raw_dealer(endpoint) as worker, PipelinedClient(endpoint, depth=4, timeout=10,
                                                         retries=0) as clients:
        _register(worker, b"slow")
        for n in range(4):
            clients.send("slow", [str(n).encode()], n)
        for _ in range(4):
            request = _next_request(worker)
            # 50 ms of work: no second request may arrive while this one is in hand.
            assert _no_request_within(worker, 0.05)
            _reply(worker, request)
        done = []
        while len(done) < 4:
            done += clients.poll(5)
        assert sorted(c.tag for c in done) == [0, 1, 2, 3]
        assert all(c.error is None for c in done)
