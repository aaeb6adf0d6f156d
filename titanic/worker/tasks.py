"""The worker's side of a task: decode the call, run the function, encode what it returned.

A task that yields (a generator function) streams its reply: each value it yields is a part
(titanic.tasks.codec.encode_part), sent as an 18/MDP PARTIAL as soon as the next one is made
(a 7/MDP worker sends them joined, when the generator ends).

What cannot succeed however often it is tried fails the request at once (a permanent failure
report): a request that is not a task call, arguments the function does not take, a return
value msgpack cannot carry. An exception the function raises is reported as any handler's is:
retried after the backoff, unless it is a titanic.PermanentError.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from titanic.errors import PermanentError, ProtocolError
from titanic.protocol.mdp import Frames
from titanic.tasks.codec import (
    TASK_PART_FRAME,
    decode_call,
    encode_part,
    encode_result,
    split_request_id,
)
from titanic.tasks.current import running
from titanic.tasks.define import Task
from titanic.worker.mdp import Handler


def task_handler(task: Task[Any, Any]) -> Handler:
    """A worker handler serving `task` in the titanic.task/1 wire form."""
    try:
        signature: inspect.Signature | None = inspect.signature(task.function)
    except (TypeError, ValueError):  # a callable Python cannot describe: the call will tell
        signature = None

    def handle(frames: Frames) -> Frames | Iterator[Frames]:
        call, request_id = split_request_id(frames)
        try:
            args, kwargs = decode_call(call)
            if signature is not None:
                signature.bind(*args, **kwargs)
        except (ProtocolError, TypeError) as exc:
            raise PermanentError from _named(task, exc)
        with running(task.name, request_id):
            value = task.function(*args, **kwargs)
        if inspect.isgenerator(value):
            return _parts(value, task.name, request_id)
        try:
            return encode_result(value, task.name)
        except TypeError as exc:
            raise PermanentError from exc

    return handle


def _parts(values: Iterator[Any], name: str, request_id: str | None) -> Iterator[Frames]:
    """The parts of a yielding task's reply (one alone, TASK_PART_FRAME, when it yields
    nothing); a value msgpack cannot carry fails the request for good. The generator runs
    with its titanic.current() as the function's first call did."""
    empty = True
    while True:
        with running(name, request_id):
            try:
                value = next(values)
            except StopIteration:
                break
        empty = False
        try:
            yield encode_part(value, name)
        except TypeError as exc:
            raise PermanentError from exc
    if empty:
        yield [TASK_PART_FRAME]


def _named(task: Task[Any, Any], exc: Exception) -> Exception:
    """The exception with the task's name in front of its message (same type)."""
    if isinstance(exc, TypeError):
        return TypeError(f"{task.name}: {exc}")
    return exc
