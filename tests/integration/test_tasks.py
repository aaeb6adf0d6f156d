"""Tasks end to end: a broker with the dispatcher in it (SQLite), workers serving the tasks of a
module as `titanic worker run example_tasks` does, and the task API, blocking and asyncio; and
the wire form spoken with raw ZeroMQ sockets, as a client or worker in another language would."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import example_tasks
import msgpack
import pytest
import zmq
from titanic_support import (
    FAST_BROKER,
    free_endpoint,
    recv_within,
    run_cli,
    running,
    start_broker,
    wait_until,
)

import titanic
from titanic import AsyncHandle, Handle, TaskFailed, TitanicClient, TitanicTimeoutError
from titanic.client.answers import ReplyState
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.settings import DispatcherSettings
from titanic.errors import HandshakeRefusedError, UnknownRequestError
from titanic.security import (
    CurveServer,
    client_hook,
    load_keypair,
    load_public_key,
    write_keypair,
)
from titanic.store import Store
from titanic.tasks.clients import close_default_clients
from titanic.worker import Worker
from titanic.worker.group import WorkerGroup, load_target
from titanic.worker.tasks import task_handler

SETTINGS = DispatcherSettings(request_timeout=30, max_attempts=3, backoff=0.05,
                              backoff_max=0.2, presence_interval=0.05, presence_ttl=0.5,
                              release_interval=0.1, drain_timeout=0.5)
TASK_FRAME = b"titanic.task/1"  # spelled out: the raw tests speak the documented wire form
MDP_CLIENT, MDP_WORKER = b"MDPC01", b"MDPW01"


def hosting_broker(stack: ExitStack, store: Store, settings: DispatcherSettings = SETTINGS,
                   heartbeat: float = 0.1) -> str:
    broker = start_broker(stack, replace(FAST_BROKER, heartbeat_interval=heartbeat),
                          host=HostedDispatcher(store, settings))
    return broker.bound[0]


def serve_tasks(stack: ExitStack, endpoint: str, module: str = "example_tasks",
                count: int = 2) -> WorkerGroup:
    """What `titanic worker run MODULE -c COUNT` runs, in threads of this process."""
    handlers = {task.name: task_handler(task) for task in load_target(module).tasks}
    group = WorkerGroup(handlers, count, lambda context, service, handler: Worker(
        endpoint, service, handler, heartbeat_interval=0.1, reconnect_initial=0.05,
        context=context))
    stack.enter_context(running(group))
    return group


@pytest.fixture
def endpoint(store: Store, stack: ExitStack) -> Iterator[str]:
    """A broker hosting the dispatcher, the example tasks served, default clients there."""
    address = hosting_broker(stack, store)
    serve_tasks(stack, address)
    titanic.configure(address)
    yield address
    close_default_clients()
    titanic.configure()


def test_args_kwargs_and_bytes_reach_the_task_and_its_result_comes_back(endpoint: str) -> None:
    handle = example_tasks.resize.submit(b"\x00\xff\x80rest", 640, keep_ratio=False)
    assert isinstance(handle, Handle) and len(handle.id) == 32
    assert handle.result(timeout=30) == {
        "size": 7, "width": 640, "keep_ratio": False, "head": b"\x00\xff",
        "nested": [1, [2.5, None], {"k": b"\x00"}]}
    echoed = example_tasks.echo.submit(b"raw", "text", (1, 2), {"k": [b"v"]}, n=-(2**63),
                                       big=2**64 - 1, none=None, f=0.25)
    assert echoed.result(timeout=30) == {
        "args": [b"raw", "text", [1, 2], {"k": [b"v"]}],
        "kwargs": {"n": -(2**63), "big": 2**64 - 1, "none": None, "f": 0.25}}
    assert handle.state() is ReplyState.DONE


def test_a_raising_task_fails_with_its_type_message_and_traceback(endpoint: str) -> None:
    before = example_tasks.runs["explode"]
    handle = example_tasks.explode.submit("bad: input")
    with pytest.raises(TaskFailed) as raised:
        handle.result(timeout=30)
    failure = raised.value
    assert (failure.type_name, failure.message, failure.attempts) == ("ValueError",
                                                                      "bad: input", 3)
    assert failure.traceback.startswith("Traceback (most recent call last):")
    assert "in _check" in failure.traceback and "raise ValueError(message)" in failure.traceback
    assert failure.traceback.endswith("ValueError: bad: input")
    first_call = failure.traceback.splitlines()[1]  # the worker's own calls are left out
    assert "example_tasks.py" in first_call and "in explode" in first_call, failure.traceback
    assert str(failure) == f"request {handle.id} failed: ValueError: bad: input (after 3 " \
                           "attempts)"
    assert example_tasks.runs["explode"] - before == 3


def test_a_permanent_error_fails_at_once(endpoint: str) -> None:
    before = example_tasks.runs["refuse"]
    with pytest.raises(TaskFailed) as raised:
        example_tasks.refuse.submit("never").result(timeout=30)
    assert (raised.value.type_name, raised.value.message, raised.value.attempts) == (
        "PermanentError", "never", None)
    assert 'raise PermanentError(message)' in raised.value.traceback
    assert example_tasks.runs["refuse"] - before == 1


def test_an_unpackable_result_fails_at_once_naming_it(endpoint: str) -> None:
    before = example_tasks.runs["unpackable"]
    with pytest.raises(TaskFailed) as raised:
        example_tasks.unpackable.submit().result(timeout=30)
    assert raised.value.type_name == "TypeError"
    assert raised.value.message == "unpackable returned a set, which msgpack cannot carry"
    assert raised.value.attempts is None  # permanent: tried once
    assert example_tasks.runs["unpackable"] - before == 1


def test_arguments_the_function_does_not_take_fail_at_once(endpoint: str) -> None:
    before = example_tasks.runs["resize"]
    with pytest.raises(TaskFailed) as raised:
        example_tasks.resize.submit_with((b"x",), {"colour": "red"}).result(timeout=30)
    assert raised.value.type_name == "TypeError"
    assert raised.value.message.startswith("resize: ")
    assert example_tasks.runs["resize"] == before  # never called


def test_a_handle_made_from_the_uuid_in_another_process_reads_the_result(
        endpoint: str) -> None:
    request_id = example_tasks.resize.submit(b"abc", 3).id
    script = ("import sys, titanic\n"
              "value = titanic.Handle(sys.argv[1]).result(timeout=30)\n"
              "print(value['size'], value['head'].hex())\n")
    done = subprocess.run([sys.executable, "-c", script, request_id], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TITANIC_BROKER": endpoint},
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "6162"]


def test_a_fresh_client_reads_the_result_and_close_forgets_it(endpoint: str) -> None:
    handle = example_tasks.resize.submit(b"abc", 3)
    with TitanicClient(endpoint, timeout=2.0, retries=3) as fresh:
        again = Handle(handle.id, client=fresh)
        assert again.result(timeout=30)["size"] == 3
        again.close()
        with pytest.raises(UnknownRequestError, match=f"request {handle.id} is unknown"):
            again.result(timeout=5)
    with pytest.raises(UnknownRequestError):
        handle.result(timeout=5)
    handle.close()  # closing again is fine


def test_a_request_that_is_not_a_task_call_fails_at_once(endpoint: str) -> None:
    with TitanicClient(endpoint, timeout=2.0, retries=3) as client:
        request_id = client.submit("resize", b"plain", b"frames")
        fetched = client.wait(request_id, timeout=30)
    assert fetched.state is ReplyState.FAILED
    assert fetched.text.startswith("TaskRequestError: a task request is two frames, "
                                   "'titanic.task/1' and the msgpack arguments")
    assert " (after " not in fetched.text.splitlines()[0]  # permanent: no retries


def test_a_handle_on_a_plain_request_says_its_reply_is_no_task_result(
        endpoint: str, stack: ExitStack) -> None:
    stack.enter_context(running(Worker(endpoint, "plain.echo", lambda frames: frames,
                                       heartbeat_interval=0.1)))
    with TitanicClient(endpoint, timeout=2.0, retries=3) as client:
        request_id = client.submit("plain.echo", b"hello")
    with pytest.raises(titanic.ProtocolError, match="the reply is not a task's result"):
        Handle(request_id).result(timeout=30)


def test_an_idempotency_key_stores_one_request(endpoint: str) -> None:
    first = example_tasks.resize.submit_with((b"k", 1), key="order-17")
    second = example_tasks.resize.submit_with((b"k", 1), key="order-17")
    assert first == second
    assert first.result(timeout=30)["size"] == 1


def test_result_times_out_while_nothing_serves_the_task(endpoint: str) -> None:
    lonely = titanic.task(name="nobody.serves")(lambda: None)
    handle = lonely.submit()
    started = time.monotonic()
    with pytest.raises(TitanicTimeoutError, match=r"has no result after 0\.3 s"):
        handle.result(timeout=0.3)
    assert time.monotonic() - started < 10
    assert handle.state() is ReplyState.PENDING
    handle.close()


def test_the_async_form_submits_and_reads_results_concurrently(endpoint: str) -> None:
    async def main() -> None:
        handles = await asyncio.gather(*(example_tasks.resize.submit_async(b"x" * n, n)
                                         for n in range(1, 6)))
        assert all(isinstance(handle, AsyncHandle) for handle in handles)
        results = await asyncio.gather(*(handle.result(timeout=30) for handle in handles))
        assert [result["size"] for result in results] == [1, 2, 3, 4, 5]
        again = AsyncHandle(handles[0].id)
        assert (await again.result(timeout=5))["width"] == 1
        assert await again.state() is ReplyState.DONE
        with pytest.raises(TaskFailed) as raised:
            await (await example_tasks.explode.submit_async("async")).result(timeout=30)
        assert raised.value.message == "async" and "in _check" in raised.value.traceback
        await again.close()
        with pytest.raises(UnknownRequestError):
            await again.result(timeout=5)

    asyncio.run(main())


def test_handles_work_from_many_threads_at_once(endpoint: str) -> None:
    results: dict[int, object] = {}

    def submit_and_read(n: int) -> None:
        results[n] = example_tasks.resize.submit(b"t" * n, n).result(timeout=30)["size"]

    threads = [threading.Thread(target=submit_and_read, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {1: 1, 2: 2, 3: 3, 4: 4}


def test_an_expired_request_raises_task_failed(store: Store, stack: ExitStack) -> None:
    expiring = replace(SETTINGS, pending_ttl=0.2, cleanup_interval=0.1)
    address = hosting_broker(stack, store, expiring)
    with TitanicClient(address, timeout=2.0, retries=3) as client:
        handle = titanic.task(name="nobody.ever")(lambda: None).submit_with(client=client)
        with pytest.raises(TaskFailed) as raised:
            handle.result(timeout=30)
    assert raised.value.state == "expired" and raised.value.type_name == ""
    assert raised.value.message.startswith("not delivered within 0.2 s")
    assert str(raised.value).startswith(f"request {handle.id} expired: ")


# -- the wire form with raw sockets ------------------------------------------------------------

def raw_client_request(sock: zmq.Socket[bytes], service: bytes, *body: bytes) -> list[bytes]:
    """One 7/MDP request from a bare DEALER: the reply's body frames."""
    sock.send_multipart([b"", MDP_CLIENT, service, *body])
    reply = recv_within(sock, 10)
    assert reply[:3] == [b"", MDP_CLIENT, service], reply
    return reply[3:]


def test_a_raw_zeromq_client_speaks_the_task_wire_form(endpoint: str) -> None:
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        call = msgpack.packb({"args": [b"\x01\x02\x03", 9], "kwargs": {"keep_ratio": False}},
                             use_bin_type=True)
        stored = raw_client_request(sock, b"titanic.request", b"resize", TASK_FRAME, call)
        assert stored[0] == b"200" and len(stored[1]) == 32
        request_id = stored[1]
        answer: list[bytes] = []

        def answered() -> bool:
            answer[:] = raw_client_request(sock, b"titanic.reply", request_id)
            return answer[0] != b"300"

        wait_until(answered, timeout=30, interval=0.05, message="the task's result")
        assert answer[0] == b"200" and answer[1] == TASK_FRAME and len(answer) == 3
        assert msgpack.unpackb(answer[2], raw=False) == {
            "size": 3, "width": 9, "keep_ratio": False, "head": b"\x01\x02",
            "nested": [1, [2.5, None], {"k": b"\x00"}]}
        bad = raw_client_request(sock, b"titanic.request", b"explode", TASK_FRAME,
                                 msgpack.packb({"args": ["raw"]}))[1]
        wait_until(lambda: raw_client_request(sock, b"titanic.reply", bad)[0] != b"300",
                   timeout=30, interval=0.05, message="the failure")
        failed = raw_client_request(sock, b"titanic.reply", bad)
        assert failed[0] == b"400"
        summary, traceback = failed[1].decode().split("\n", 1)
        assert summary == "failed: ValueError: raw (after 3 attempts)"
        assert traceback.startswith("Traceback") and traceback.endswith("ValueError: raw")
        assert raw_client_request(sock, b"titanic.close", request_id) == [b"200"]
    finally:
        sock.close(0)


class RawTaskWorker:
    """A 7/MDP worker on a bare DEALER serving the task `raw.add` from the documented wire
    form: it adds its two arguments, and reports a failure (four frames) for a string."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.sock.send_multipart([b"", MDP_WORKER, b"\x01", b"raw.add"])
        heartbeat = time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() - heartbeat > 0.1:
                    self.sock.send_multipart([b"", MDP_WORKER, b"\x04"])
                    heartbeat = time.monotonic()
                if not self.sock.poll(50):
                    continue
                frames = self.sock.recv_multipart()
                if frames[2] == b"\x02":  # REQUEST: "", MDPW01, 0x02, client, "", body...
                    client, body = frames[3], frames[5:]
                    self.sock.send_multipart([b"", MDP_WORKER, b"\x03", client, b"",
                                              *self.answer(body)])
        finally:
            self.sock.close(0)

    @staticmethod
    def answer(body: list[bytes]) -> list[bytes]:
        assert body[0] == TASK_FRAME
        # The request's UUID, added by the dispatcher (for titanic.cancelled): 32 hex digits.
        assert len(body) == 3 and int(body[2], 16) >= 0 and len(body[2]) == 32, body
        call = msgpack.unpackb(body[1], raw=False)
        a, b = call["args"]
        if isinstance(a, str):
            return [b"titanic.failure", b"permanent", b"TypeError: a is text",
                    b"Traceback (most recent call last):\n  raw worker, add\nTypeError: a is text"]
        return [TASK_FRAME, msgpack.packb({"sum": a + b, "kwargs": call["kwargs"]})]


def test_a_raw_worker_serves_a_task_called_from_python(store: Store, stack: ExitStack) -> None:
    address = hosting_broker(stack, store, heartbeat=0.5)
    stack.enter_context(running(RawTaskWorker(address)))
    add: Callable[..., object] = titanic.task(name="raw.add")(lambda a, b, **kwargs: a + b)
    with TitanicClient(address, timeout=2.0, retries=3) as client:
        assert add.submit_with((2, 40), {"note": "n"}, client=client).result(30) == {
            "sum": 42, "kwargs": {"note": "n"}}
        with pytest.raises(TaskFailed) as raised:
            add.submit_with(("x", 1), client=client).result(30)
    assert (raised.value.type_name, raised.value.message) == ("TypeError", "a is text")
    assert raised.value.traceback.splitlines()[1] == "  raw worker, add"


def test_fetch_prints_a_task_result_as_json(endpoint: str) -> None:
    submitted = run_cli("submit", "resize", "--broker", endpoint, "--task-args",
                        '{"args": [{"$bytes": "AAEC"}], "kwargs": {"width": 5}}')
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    plain = run_cli("fetch", "--wait", "--timeout", "30", request_id, "--broker", endpoint)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout) == {
        "size": 3, "width": 5, "keep_ratio": True, "head": {"$bytes": "AAE="},
        "nested": [1, [2.5, None], {"k": {"$bytes": "AA=="}}]}
    shown = run_cli("fetch", "--json", request_id, "--broker", endpoint)
    assert json.loads(shown.stdout)["result"]["width"] == 5
    raw = run_cli("fetch", "--raw", request_id, "--broker", endpoint)
    assert raw.stdout.startswith(TASK_FRAME)


def test_fetch_shows_a_failed_task_on_one_line_and_its_traceback_in_json(
        endpoint: str, sqlite_url: str) -> None:
    request_id = example_tasks.refuse.submit("out of stock").id
    with pytest.raises(TaskFailed):
        Handle(request_id).result(timeout=30)
    plain = run_cli("fetch", request_id, "--broker", endpoint)
    assert plain.returncode == 5
    assert plain.stderr.decode() == f"titanic: request {request_id} is failed: " \
                                    "PermanentError: out of stock\n"
    shown = run_cli("fetch", "--json", request_id, "--broker", endpoint)
    assert shown.returncode == 5
    answer = json.loads(shown.stdout)
    assert answer["error"] == "PermanentError: out of stock"
    assert answer["traceback"].endswith("titanic.errors.PermanentError: out of stock")
    status = run_cli("status", "--db", sqlite_url, request_id).stdout.decode()
    assert "Traceback" not in status
    assert [line.split(None, 1)[1] for line in status.splitlines()
            if line.startswith("last_error")] == ["PermanentError: out of stock"]


@pytest.mark.parametrize(("task_args", "extra", "says"), [
    ("{", [], "--task-args is not JSON: "),
    ("[1]", [], '--task-args must be a JSON object of "args" (an array) and "kwargs"'),
    ('{"args": {}}', [], '--task-args: "args" must be an array and "kwargs" an object'),
    ('{"args": [{"$bytes": "!!"}]}', [], '--task-args: args[0]: "$bytes" must be base64 text'),
    ('{"args": [18446744073709551616]}', [], "--task-args: resize: argument 0 is an int outside"),
    ("{}", ["payload"], "--task-args is the whole request: give no PAYLOAD or --frame"),
])
def test_bad_task_args_are_one_line_and_exit_2(task_args: str, extra: list[str],
                                               says: str) -> None:
    done = run_cli("submit", "resize", *extra, "--task-args", task_args, "--broker",
                   free_endpoint())
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1 and says in done.stderr.decode(), done.stderr


def test_default_clients_speak_curve_from_the_environment(
        store: Store, stack: ExitStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    for name in ("broker", "client", "worker"):
        write_keypair(keys, name)
    allowed.mkdir()
    for name in ("client", "worker"):
        shutil.copyfile(keys / f"{name}.key", allowed / f"{name}.key")
    broker = start_broker(stack, curve=CurveServer(load_keypair(keys / "broker.key_secret"),
                                                   allowed),
                          host=HostedDispatcher(store, SETTINGS))
    address = broker.bound[0]
    worker_hook = client_hook(load_public_key(keys / "broker.key"),
                              load_keypair(keys / "worker.key_secret"))
    stack.enter_context(running(Worker(address, "resize", task_handler(example_tasks.resize),
                                       heartbeat_interval=0.1, configure_socket=worker_hook)))
    stack.callback(titanic.configure)
    stack.callback(close_default_clients)
    titanic.configure(address, timeout=0.5, retries=0)  # no keys: the broker admits nobody
    with pytest.raises(HandshakeRefusedError, match="requires CURVE"):
        example_tasks.resize.submit(b"plain", 1)
    monkeypatch.setenv("TITANIC_BROKER", address)
    monkeypatch.setenv("TITANIC_CURVE_SERVER_KEY", str(keys / "broker.key"))
    monkeypatch.setenv("TITANIC_CURVE_KEY", str(keys / "client.key_secret"))
    titanic.configure()
    assert example_tasks.resize.submit(b"curve", 2).result(timeout=30)["size"] == 5
