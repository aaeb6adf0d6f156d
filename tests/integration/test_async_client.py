"""AsyncTitanicClient against a running broker, dispatcher and worker (in threads)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from titanic_support import FAST_CONNECTION, free_endpoint, running

from titanic import AsyncTitanicClient, ClientClosedError, PermanentError, TitanicTimeoutError
from titanic.bench.tsp import wait_for_titanic
from titanic.client.tsp import ReplyState
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.protocol.mdp import Frames
from titanic.store import Store
from titanic.worker import Worker

DOCS = Path(__file__).parents[2] / "docs"


def start_titanic(stack: ExitStack, broker: str, store: Store) -> None:
    settings = DispatcherSettings(
        broker=broker, request_timeout=30, max_attempts=2, backoff=0.05, backoff_max=0.1,
        presence_interval=0.05, connection=FAST_CONNECTION)
    stack.enter_context(running(Dispatcher(store, settings)))

    def upper(frames: Frames) -> Frames:
        if frames[:1] == [b"bad"]:
            raise PermanentError from ValueError("bad input")
        return [frame.upper() for frame in frames]

    stack.enter_context(running(Worker(broker, "upper", upper, heartbeat_interval=0.1)))


def test_submit_wait_fetch_close(broker: str, store: Store, stack: ExitStack) -> None:
    start_titanic(stack, broker, store)

    async def flow() -> None:
        async with AsyncTitanicClient(broker, timeout=5) as titanic:
            request_id = await titanic.submit("upper", "héllo", b"x")
            done = await titanic.wait(request_id, timeout=30)
            assert done.state is ReplyState.DONE and done.reply == ["HéLLO".encode(), b"X"]
            dashed = f"{request_id[:8]}-{request_id[8:12]}-{request_id[12:16]}-" \
                     f"{request_id[16:20]}-{request_id[20:]}".upper()
            assert (await titanic.fetch(dashed)).reply == done.reply
            failed = await titanic.wait(await titanic.submit("upper", b"bad"), timeout=30)
            assert str(failed) == "failed: ValueError: bad input"
            await titanic.close_request(request_id)
            assert (await titanic.fetch(request_id)).state is ReplyState.UNKNOWN
            keyed = await titanic.submit("upper", b"once", key="order-17")
            assert await titanic.submit("upper", b"once", key="order-17") == keyed

    asyncio.run(flow())


def test_calls_run_concurrently(broker: str, store: Store, stack: ExitStack) -> None:
    start_titanic(stack, broker, store)

    async def many() -> list[Frames]:
        async with AsyncTitanicClient(broker, timeout=10) as titanic:
            ids = await asyncio.gather(*(titanic.submit("upper", f"n{n}") for n in range(30)))
            assert len(set(ids)) == 30
            done = await asyncio.gather(*(titanic.wait(i, timeout=60) for i in ids))
            return [fetched.reply for fetched in done]

    assert asyncio.run(many()) == [[f"N{n}".encode()] for n in range(30)]


def test_fails_over_to_the_next_broker(broker: str, store: Store, stack: ExitStack) -> None:
    start_titanic(stack, broker, store)
    # Serving before the client starts: it gives the live broker one attempt of 0.5 s between
    # two on the dead one, less than a dispatcher may take to start on a busy machine.
    wait_for_titanic(broker)
    dead = free_endpoint()

    async def submit() -> tuple[str, str]:
        async with AsyncTitanicClient([dead, broker], timeout=0.5, retries=2) as titanic:
            request_id = await titanic.submit("upper", b"over")
            return request_id, titanic.broker

    request_id, answered = asyncio.run(submit())
    assert answered == broker
    assert store.get(request_id) is not None


def test_timeouts_say_which_piece_is_down(broker: str) -> None:
    nobody = free_endpoint()

    async def submit(where: str) -> str:
        async with AsyncTitanicClient(where, timeout=0.3, retries=0) as titanic:
            with pytest.raises(TitanicTimeoutError) as raised:
                await titanic.submit("upper", b"x")
            return str(raised.value)

    assert f"nothing listens at {nobody} (connection refused)" in asyncio.run(submit(nobody))
    assert ("the broker answers, but no worker serves 'titanic.request' (is titanic-dispatcher "
            "running?)") in asyncio.run(submit(broker))


def test_a_cancelled_call_leaves_the_client_usable(broker: str, store: Store,
                                                  stack: ExitStack) -> None:
    start_titanic(stack, broker, store)

    async def flow() -> None:
        titanic = AsyncTitanicClient(broker, timeout=5)
        with pytest.raises(TimeoutError):  # cancelled by wait_for, mid-call
            await asyncio.wait_for(titanic.has_workers("upper", timeout=5), timeout=0.000001)
        request_id = await titanic.submit("upper", b"after")
        assert (await titanic.wait(request_id, timeout=30)).reply == [b"AFTER"]
        titanic.close()
        with pytest.raises(ClientClosedError):
            await titanic.fetch(request_id)

    asyncio.run(flow())


def test_the_documented_example_runs(broker: str, store: Store, stack: ExitStack) -> None:
    start_titanic(stack, broker, store)
    stack.enter_context(running(Worker(broker, "echo", lambda f: f, heartbeat_interval=0.1)))
    text = (DOCS / "quickstart.md").read_text()
    found = re.search(r"<!-- async example -->\n```python\n(.*?)```", text, re.S)
    assert found is not None, "the asyncio example in docs/quickstart.md"
    done = subprocess.run([sys.executable, "-c", found[1]], capture_output=True, timeout=120,
                          env={**os.environ, "TITANIC_BROKER": broker}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == ["[b'hello']", "[b'world']"]
