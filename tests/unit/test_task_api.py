"""The task API without a broker: defining tasks, local calls, handles, TaskFailed, and the
default clients (made per thread and per event loop, replaced by configure())."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import example_tasks
import pytest
import zmq
from titanic_support import nothing_within, recv_within

import titanic
from titanic import TaskFailed, TitanicClient, UsageError
from titanic.client.answers import Fetched, ReplyState
from titanic.errors import ClientClosedError, CurveKeyError
from titanic.tasks.clients import close_default_clients, default_async_client, default_client
from titanic.tasks.define import Task, tasks_defined_in
from titanic.tasks.handles import task_failed

UUID = "0190c6f2a1b47c3e9d2f00112233aabb"


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Default clients made from a clean environment, closed and forgotten afterwards."""
    for name in ("TITANIC_BROKER", "TITANIC_CURVE_SERVER_KEY", "TITANIC_CURVE_KEY"):
        monkeypatch.delenv(name, raising=False)
    titanic.configure()
    yield
    close_default_clients()
    monkeypatch.undo()
    titanic.configure()


def test_a_task_called_directly_runs_here_unchanged() -> None:
    before = example_tasks.runs["resize"]
    result = example_tasks.resize(b"\x00\x01xyz", 7, keep_ratio=False)
    assert result["size"] == 5 and result["width"] == 7 and result["keep_ratio"] is False
    assert example_tasks.runs["resize"] == before + 1


def test_a_task_keeps_its_functions_name_and_doc() -> None:
    assert isinstance(example_tasks.resize, Task)
    assert example_tasks.resize.name == "resize"
    assert example_tasks.resize.__name__ == "resize"
    assert example_tasks.resize.__doc__ is not None and "bytes" in example_tasks.resize.__doc__
    assert example_tasks.echo.name == "examples.echo"
    assert "examples.echo" in repr(example_tasks.echo)


@pytest.mark.parametrize(("name", "says"), [
    ("", "non-empty"), ("mmi.service", "reserved"), ("titanic.request", "reserved"),
    ("x" * 256, "over 255 bytes"),
])
def test_a_task_name_the_broker_cannot_serve_is_refused(name: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        titanic.task(name=name)(lambda: None)


def test_only_the_tasks_a_module_defines_are_its_own() -> None:
    names = [task.name for task in tasks_defined_in(example_tasks)]
    assert names == ["resize", "examples.echo", "explode", "refuse", "unpackable"]
    assert tasks_defined_in(sys.modules[__name__]) == []  # imports example_tasks' tasks only


def test_an_unpackable_argument_is_refused_before_anything_is_sent() -> None:
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        with TitanicClient(f"tcp://127.0.0.1:{port}", timeout=0.3, retries=0) as client:
            with pytest.raises(TypeError, match="resize: argument 'width' is a set"):
                example_tasks.resize.submit_with((b"x",), {"width": {1}}, client=client)
            with pytest.raises(TypeError, match="resize: argument 0 is an object"):
                example_tasks.resize.submit_with((object(), 1), client=client)
            assert nothing_within(router, 0.3)
            with pytest.raises(titanic.TitanicTimeoutError):  # a packable one is sent
                example_tasks.resize.submit_with((b"x", 1), client=client)
            assert recv_within(router)
    finally:
        router.close(0)


def test_args_must_be_a_sequence_of_arguments() -> None:
    with pytest.raises(TypeError, match="args must be a list or tuple"):
        example_tasks.resize.submit_with(b"xy")  # type: ignore[arg-type]


def test_a_handle_takes_either_uuid_form_and_refuses_others() -> None:
    hyphenated = f"{UUID[:8]}-{UUID[8:12]}-{UUID[12:16]}-{UUID[16:20]}-{UUID[20:]}".upper()
    assert titanic.Handle(hyphenated).id == UUID
    assert titanic.Handle(UUID) == titanic.Handle(UUID) and titanic.AsyncHandle(UUID).id == UUID
    with pytest.raises(UsageError, match="is not a request UUID"):
        titanic.Handle("abc")
    with pytest.raises(UsageError, match="timeout must be 0 or more"):
        titanic.Handle(UUID, client=TitanicClient("tcp://127.0.0.1:9")).result(timeout=-1)


def failed(text: str, state: ReplyState = ReplyState.FAILED) -> TaskFailed:
    return task_failed(UUID, Fetched(state, [], text))


def test_task_failed_carries_the_remote_exception() -> None:
    error = failed("ValueError: bad: input (after 3 attempts)\nTraceback (most recent call "
                   "last):\n  File \"t.py\", line 1, in f\nValueError: bad: input")
    assert (error.type_name, error.message, error.attempts) == ("ValueError", "bad: input", 3)
    assert error.traceback.startswith("Traceback") and error.traceback.endswith("bad: input")
    assert str(error) == f"request {UUID} failed: ValueError: bad: input (after 3 attempts)"
    assert (error.request_id, error.state) == (UUID, "failed")


def test_task_failed_reads_reports_without_a_traceback_and_other_endings() -> None:
    old = failed("KeyError")  # a three-frame report, an exception without a message
    assert (old.type_name, old.message, old.traceback, old.attempts) == ("KeyError", "", "",
                                                                         None)
    timeout = failed("no reply from 'resize' within 10 s (after 5 attempts)")
    assert (timeout.type_name, timeout.message, timeout.attempts) == (
        "", "no reply from 'resize' within 10 s", 5)
    expired = failed("not delivered within 60 s", ReplyState.EXPIRED)
    assert (expired.state, expired.type_name, expired.message) == (
        "expired", "", "not delivered within 60 s")
    assert str(expired) == f"request {UUID} expired: not delivered within 60 s"


def test_task_failed_survives_pickling() -> None:
    error = failed("ValueError: x\nTraceback ...")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.type_name, copy.message, copy.traceback, str(copy)) == (
        error.type_name, error.message, error.traceback, str(error))


def test_import_titanic_and_defining_a_task_load_neither_zmq_nor_msgpack(tmp_path: Path
                                                                        ) -> None:
    script = ("import sys, titanic\n"
              "@titanic.task\n"
              "def add(a: int, b: int) -> int:\n"
              "    return a + b\n"
              "assert add(1, 2) == 3 and isinstance(titanic.Handle, type)\n"
              "print(sorted(m for m in ('zmq', 'msgpack', 'sqlalchemy') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_each_thread_has_its_own_default_client_closed_when_the_thread_is_gone(
        defaults: None) -> None:
    mine = default_client()
    assert default_client() is mine
    theirs: list[TitanicClient] = []
    thread = threading.Thread(target=lambda: theirs.append(default_client()))
    thread.start()
    thread.join()
    assert theirs[0] is not mine and theirs[0].broker == "tcp://127.0.0.1:5555"
    other = threading.Thread(target=default_client)  # a new client: the dead thread's closes
    other.start()
    other.join()
    with pytest.raises(ClientClosedError):
        theirs[0].fetch(UUID)
    assert default_client() is mine


def test_each_event_loop_has_its_own_default_client(defaults: None) -> None:
    async def current() -> titanic.AsyncTitanicClient:
        assert default_async_client() is default_async_client()
        return default_async_client()

    first = asyncio.run(current())
    second = asyncio.run(current())  # the first loop is closed: its client with it
    assert first is not second
    with pytest.raises(ClientClosedError):
        asyncio.run(first.fetch(UUID))


def test_configure_and_the_environment_say_where_default_clients_connect(
        defaults: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TITANIC_BROKER", "tcp://127.0.0.1:7001, tcp://127.0.0.1:7002")
    titanic.configure()
    assert default_client().broker == "tcp://127.0.0.1:7001"
    assert default_client()._session.brokers == ["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]
    before = default_client()
    titanic.configure("tcp://127.0.0.1:7003")
    assert default_client() is not before and default_client().broker == "tcp://127.0.0.1:7003"
    with pytest.raises(ClientClosedError):
        before.fetch(UUID)


def test_curve_keys_are_checked_when_configured(defaults: None, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CurveKeyError):
        titanic.configure(curve_server_key=tmp_path / "none.key",
                          curve_key=tmp_path / "none.key_secret")
    with pytest.raises(UsageError, match="CURVE takes both keys or neither"):
        titanic.configure(curve_server_key=tmp_path / "broker.key")
    monkeypatch.setenv("TITANIC_CURVE_KEY", str(tmp_path / "client.key_secret"))
    with pytest.raises(UsageError, match="CURVE takes both keys or neither"):
        titanic.configure()  # the environment is read now
