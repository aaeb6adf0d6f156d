"""Streamed replies from outside, on SQLite and PostgreSQL: an 18/MDP worker whose handler is a
generator sends its parts as PARTIALs, the dispatcher (in the broker, or of its own) stores each
as it comes, and a follower gets each once, in order, also across a broker restart; a plain
titanic.reply of the finished request gets the parts joined."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace

import pytest
from standard_tsp import StandardTitanic
from titanic_support import (
    CLI,
    Processes,
    fast_dispatcher,
    free_endpoint,
    run_cli,
    running,
    start_broker,
    start_worker,
    wait_until,
)

from titanic import Handle, task
from titanic.client import Client
from titanic.client.aio import AsyncTitanicClient
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.standalone import Dispatcher
from titanic.errors import UnknownRequestError
from titanic.protocol.mdp import Dialect, Frames
from titanic.store import SqlStore, open_store
from titanic.worker.tasks import task_handler

SETTINGS = fast_dispatcher(request_timeout=5.0, max_attempts=5)


class GatedStream:
    """A generator handler: part i goes out once gate i opens (a part leaves the worker when
    the next is made); every gate is open for a second attempt."""

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self.gates = [threading.Event() for _ in range(parts)]
        self.runs = 0

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()

    def __call__(self, body: Frames) -> Iterator[list[bytes]]:
        self.runs += 1
        for number in range(1, self.parts + 1):
            yield [b"part %d" % number, *body]
            self.gates[number - 1].wait(30)


def titanic(stack: ExitStack, db_url: str, hosted: bool) -> tuple[str, SqlStore]:
    store = open_store(db_url)
    stack.callback(store.close_store)
    if hosted:
        return start_broker(stack, host=HostedDispatcher(store, SETTINGS)).bound[0], store
    endpoint = start_broker(stack).bound[0]
    stack.enter_context(running(Dispatcher(store, replace(SETTINGS, broker=[endpoint]))))
    return endpoint, store


class Following:
    """A thread following one request with a client of its own, its parts kept as they come."""

    def __init__(self, endpoint: str, request_id: str, **options: float) -> None:
        self.parts: list[Frames] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(endpoint, request_id, options))
        self.thread.start()

    def _run(self, endpoint: str, request_id: str, options: dict[str, float]) -> None:
        try:
            with TitanicClient(endpoint, **options) as client:  # type: ignore[arg-type]
                for part in client.follow(request_id, timeout=60):
                    self.parts.append(part)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def until(self, count: int) -> None:
        wait_until(lambda: len(self.parts) >= count or self.error is not None,
                   timeout=20, message=f"{count} parts followed")
        assert self.error is None, self.error

    def end(self) -> list[Frames]:
        self.thread.join(30)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.parts


@pytest.mark.parametrize("hosted", [True, False], ids=["in the broker", "own dispatcher"])
def test_each_part_is_followed_as_it_is_stored(db_url: str, stack: ExitStack,
                                               hosted: bool) -> None:
    endpoint, store = titanic(stack, db_url, hosted)
    stream = GatedStream(3)
    start_worker(stack, endpoint, "stream", stream, dialect=Dialect.MDP02)
    stack.callback(stream.open_all)  # before the worker stops
    with TitanicClient(endpoint, timeout=2.0) as client:
        request_id = client.submit("stream", b"x")
        following = Following(endpoint, request_id, timeout=2.0)
        stream.gates[0].set()
        following.until(1)
        assert following.parts == [[b"part 1", b"x"]]
        assert store.parts_after(request_id, 0) == [(1, (b"part 1", b"x"))]
        assert client.fetch(request_id).state is ReplyState.PENDING
        stream.gates[1].set()
        following.until(2)
        assert following.parts[1] == [b"part 2", b"x"]
        stream.gates[2].set()
        assert following.end() == [[b"part %d" % n, b"x"] for n in (1, 2, 3)]
        # Followed again from the start, or from part 2, once done: the same parts.
        assert list(client.follow(request_id)) == following.parts
        assert list(client.follow(request_id, after=2)) == [[b"part 3", b"x"]]
        # titanic.reply, and a 7/MDP client of it, see the parts joined, as before.
        assert client.fetch(request_id).reply == [b"part 1", b"x", b"part 2", b"x",
                                                  b"part 3", b"x"]
    with Client(endpoint, timeout=2.0) as plain:
        assert plain.request("titanic.reply", request_id.encode()) == [
            b"200", b"part 1", b"x", b"part 2", b"x", b"part 3", b"x"]
    assert stream.runs == 1


def test_a_reply_that_did_not_stream_is_one_part(db_url: str, stack: ExitStack) -> None:
    endpoint, _ = titanic(stack, db_url, True)
    start_worker(stack, endpoint, "echo")
    with TitanicClient(endpoint, timeout=2.0) as client:
        request_id = client.submit("echo", b"a", b"b")
        assert list(client.follow(request_id, timeout=20)) == [[b"a", b"b"]]
        assert list(client.follow(request_id, after=1)) == []
        with pytest.raises(UnknownRequestError, match="unknown"):
            list(client.follow("0" * 32))


def test_the_asyncio_client_follows(db_url: str, stack: ExitStack) -> None:
    endpoint, _ = titanic(stack, db_url, True)
    stream = GatedStream(2)
    for gate in stream.gates:
        gate.set()
    start_worker(stack, endpoint, "stream", stream, dialect=Dialect.MDP02)
    stack.callback(stream.open_all)  # before the worker stops

    async def follow() -> list[Frames]:
        async with AsyncTitanicClient(endpoint, timeout=2.0) as client:
            request_id = await client.submit("stream", b"y")
            return [part async for part in client.follow(request_id, timeout=20)]

    assert asyncio.run(follow()) == [[b"part 1", b"y"], [b"part 2", b"y"]]


def test_a_handler_that_fails_mid_stream_is_retried_without_repeating_parts(
        db_url: str, stack: ExitStack) -> None:
    endpoint, store = titanic(stack, db_url, True)
    runs = []

    def flaky(body: Frames) -> Iterator[list[bytes]]:
        runs.append(1)
        yield [b"one"]
        yield [b"two"]
        if len(runs) == 1:
            raise RuntimeError("worker hiccup after two parts")
        yield [b"three"]

    start_worker(stack, endpoint, "flaky", flaky, dialect=Dialect.MDP02)
    with TitanicClient(endpoint, timeout=2.0) as client:
        request_id = client.submit("flaky", b"")
        assert list(client.follow(request_id, timeout=30)) == [[b"one"], [b"two"], [b"three"]]
        assert client.fetch(request_id).reply == [b"one", b"two", b"three"]
    assert len(runs) == 2
    assert store.get(request_id).attempts == 2  # type: ignore[union-attr]


def test_following_resumes_across_a_broker_restart(db_url: str, stack: ExitStack,
                                                   procs: Processes) -> None:
    store = open_store(db_url)
    stack.callback(store.close_store)
    endpoint = free_endpoint()
    broker = procs.broker(endpoint)
    settings = replace(SETTINGS, broker=[endpoint], request_timeout=2.0)
    stack.enter_context(running(Dispatcher(store, settings)))
    stream = GatedStream(4)
    start_worker(stack, endpoint, "stream", stream, dialect=Dialect.MDP02)
    stack.callback(stream.open_all)  # before the worker stops
    with TitanicClient(endpoint, timeout=1.0, retries=30) as client:
        request_id = client.submit("stream", b"z")
        following = Following(endpoint, request_id, timeout=1.0, retries=30)
        stream.gates[0].set()
        following.until(1)
        procs.kill(broker)  # mid-stream: part 2 waits in the handler
        broker = procs.broker(endpoint)
        for gate in stream.gates:
            gate.set()
        parts = following.end()
    assert parts == [[b"part %d" % n, b"z"] for n in range(1, 5)], "none repeated or lost"
    assert store.get(request_id).reply == tuple(  # type: ignore[union-attr]
        frame for part in parts for frame in part)


class Lines:
    """A process's stdout read a line at a time as it comes, unbuffered, each within a time."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "no line in time"
            chunk = os.read(self.fd, 65536)
            assert chunk, "stdout closed"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"


def test_the_cli_prints_each_part_as_it_is_stored(db_url: str, stack: ExitStack) -> None:
    endpoint, _ = titanic(stack, db_url, True)
    stream = GatedStream(3)
    start_worker(stack, endpoint, "stream", stream, dialect=Dialect.MDP02)
    stack.callback(stream.open_all)  # before the worker stops
    with TitanicClient(endpoint, timeout=2.0) as client:
        request_id = client.submit("stream", b"x")
    proc = subprocess.Popen([*CLI, "fetch", "--follow", request_id, "-b", endpoint],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stack.callback(Processes.kill, proc)
    lines = Lines(proc)
    stream.gates[0].set()
    assert [lines.next(), lines.next()] == [b"part 1\n", b"x\n"]
    assert proc.poll() is None, "still following"
    stream.gates[1].set()
    assert [lines.next(), lines.next()] == [b"part 2\n", b"x\n"]
    stream.gates[2].set()
    assert [lines.next(), lines.next()] == [b"part 3\n", b"x\n"]
    assert proc.wait(30) == 0
    resumed = run_cli("fetch", "--follow", request_id, "--json", "-b", endpoint)
    assert resumed.returncode == 0
    assert [json.loads(line)["frames"] for line in resumed.stdout.splitlines()] == [
        ["part 1", "x"], ["part 2", "x"], ["part 3", "x"]]
    unknown = run_cli("fetch", "--follow", "0" * 32, "-b", endpoint)
    assert (unknown.returncode, unknown.stderr.count(b"\n")) == (4, 1), unknown.stderr
    with TitanicClient(endpoint, timeout=2.0) as client:
        nobody = client.submit("nobody", b"x")
    pending = run_cli("fetch", "--follow", nobody, "--timeout", "0.5", "-b", endpoint)
    assert pending.returncode == 3 and b"still pending after 0 part(s)" in pending.stderr


def test_a_standard_server_is_followed_as_one_part_once_done(stack: ExitStack) -> None:
    endpoint = start_broker(stack).bound[0]
    StandardTitanic(endpoint).start(stack)
    start_worker(stack, endpoint, "echo")
    with TitanicClient(endpoint, timeout=2.0) as client:
        request_id = client.submit("echo", b"hello", b"world")
        assert list(client.follow(request_id, timeout=20)) == [[b"hello", b"world"]]


def test_a_task_that_yields_is_followed_value_by_value(db_url: str, stack: ExitStack) -> None:
    endpoint, _ = titanic(stack, db_url, True)
    gates = [threading.Event() for _ in range(3)]
    stack.callback(lambda: [gate.set() for gate in gates])

    @task(name="count.up")
    def count_up(upto: int) -> Iterator[dict[str, int]]:
        for number in range(1, upto + 1):
            yield {"n": number}
            gates[number - 1].wait(30)

    @task(name="count.none")
    def count_none() -> Iterator[int]:
        yield from ()

    start_worker(stack, endpoint, "count.up", task_handler(count_up), dialect=Dialect.MDP02)
    start_worker(stack, endpoint, "count.none", task_handler(count_none))
    with TitanicClient(endpoint, timeout=2.0) as client:
        handle = count_up.submit_with([3], client=client)
        followed = []
        with TitanicClient(endpoint, timeout=2.0) as follower:
            values = Handle(handle.id, client=follower).follow(timeout=30)
            gates[0].set()
            followed.append(next(values))
            assert followed == [{"n": 1}]
            gates[1].set()
            gates[2].set()
            followed += list(values)
        assert followed == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert handle.result(timeout=10) == followed  # the values it yielded, as a list
        empty = count_none.submit_with([], client=client)
        assert list(empty.follow(timeout=20)) == []
        assert empty.result(timeout=10) == []


def test_the_cli_shows_a_yielding_tasks_values_as_json(db_url: str, stack: ExitStack) -> None:
    endpoint, _ = titanic(stack, db_url, True)

    @task(name="letters")
    def letters(word: str) -> Iterator[str]:
        yield from word

    start_worker(stack, endpoint, "letters", task_handler(letters), dialect=Dialect.MDP02)
    with TitanicClient(endpoint, timeout=2.0) as client:
        request_id = letters.submit_with(["abc"], client=client).id
    followed = run_cli("fetch", "--follow", request_id, "--timeout", "20", "-b", endpoint)
    assert (followed.returncode, followed.stdout) == (0, b'"a"\n"b"\n"c"\n'), followed.stderr
    fetched = run_cli("fetch", request_id, "-b", endpoint)
    assert (fetched.returncode, json.loads(fetched.stdout)) == (0, ["a", "b", "c"])


def test_a_7mdp_worker_sends_a_generators_parts_as_one_reply(db_url: str,
                                                             stack: ExitStack) -> None:
    endpoint, store = titanic(stack, db_url, True)

    def parts(body: Frames) -> Iterator[list[bytes]]:
        yield [b"one"]
        yield [b"two"]

    start_worker(stack, endpoint, "joined", parts)  # 7/MDP: no PARTIAL
    with TitanicClient(endpoint, timeout=2.0) as client:
        request_id = client.submit("joined", b"")
        assert list(client.follow(request_id, timeout=20)) == [[b"one", b"two"]]
    assert store.parts_after(request_id, 0) == []
