"""A client whose socket has no connection to take a message (the broker refused its CURVE key,
or, as here, ZMQ_IMMEDIATE with no broker listening) times out like any unanswered call instead
of blocking for ever in its send."""

from __future__ import annotations

import asyncio

import pytest
import zmq
from titanic_support import free_endpoint

from titanic.client.aio import AsyncTitanicClient
from titanic.client.mdp import Client, PipelinedClient, TitanicTimeoutError


def immediate(sock: zmq.Socket[bytes]) -> None:
    sock.setsockopt(zmq.IMMEDIATE, 1)  # no pipe until a connection is made


def test_sync_client_times_out_when_it_cannot_send() -> None:
    with (Client(free_endpoint(), timeout=0.2, retries=1, configure_socket=immediate) as client,
          pytest.raises(TitanicTimeoutError, match="after 2 attempt")):
        client.request("echo", b"x")


def test_pipelined_client_times_out_when_it_cannot_send() -> None:
    with PipelinedClient(free_endpoint(), depth=2, timeout=0.2, retries=1,
                         configure_socket=immediate) as client:
        done = list(client.run([("echo", [b"a"]), ("echo", [b"b"])]))
    assert len(done) == 2
    assert all(isinstance(item.error, TitanicTimeoutError) for item in done), done


def test_async_client_times_out_when_it_cannot_send() -> None:
    async def submit() -> None:
        client = AsyncTitanicClient(free_endpoint(), timeout=0.2, retries=1,
                                    configure_socket=immediate)
        try:
            await client.submit("echo", b"x")
        finally:
            client.close()

    with pytest.raises(TitanicTimeoutError):
        asyncio.run(asyncio.wait_for(submit(), 30))
