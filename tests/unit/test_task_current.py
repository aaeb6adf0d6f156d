"""A task call's UUID on the wire, and titanic.current() around the call on the worker."""

from __future__ import annotations

import pytest

import titanic
from titanic.errors import UsageError
from titanic.protocol.tsp import task_call_with_id
from titanic.tasks.codec import decode_result, encode_call, split_request_id
from titanic.worker.tasks import task_handler

UUID = "0190c6f2a1b47c3e9d2f00112233aabb"
seen: list[tuple[str, str | None]] = []


@titanic.task
def where_am_i(x: int) -> int:
    context = titanic.current()
    seen.append((context.service, context.request_id))
    return x + 1


def test_only_a_task_call_gets_its_uuid_and_the_worker_reads_it_back() -> None:
    call = encode_call([1], {})
    assert list(task_call_with_id(call, UUID)) == [*call, UUID.encode()]
    assert task_call_with_id([b"plain"], UUID) == [b"plain"]
    assert task_call_with_id([*call, b"x"], UUID) == [*call, b"x"]
    assert split_request_id([*call, UUID.encode()]) == (call, UUID)
    assert split_request_id(call) == (call, None)
    assert split_request_id([*call, b"not a uuid"]) == ([*call, b"not a uuid"], None)


def test_the_task_runs_with_current_set_to_its_call_and_only_then() -> None:
    seen.clear()
    handle = task_handler(where_am_i)
    assert decode_result(handle([*encode_call([1], {}), UUID.encode()])) == 2
    assert decode_result(handle(encode_call([5], {}))) == 6
    assert seen == [("where_am_i", UUID), ("where_am_i", None)]
    with pytest.raises(UsageError, match="current"):
        titanic.current()
    assert titanic.current.__module__ == "titanic.tasks.current"


def test_a_call_without_its_uuid_is_never_cancelled_and_asks_nobody() -> None:
    from titanic.tasks.current import running

    with running("svc", None) as context:
        assert context.cancelled is False
