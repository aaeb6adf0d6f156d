"""Handles on submitted tasks: a request's UUID, and how to get its result.

`Handle` blocks, `AsyncHandle` has the same calls as coroutines. Either needs only the UUID, so
a handle made from a UUID in another process, later, reads the same result. Without a client
of its own a handle uses the default one of its thread or event loop (titanic.tasks.clients).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from titanic.client.answers import Fetched, ReplyState
from titanic.errors import (
    RequestFailedError,
    TaskFailed,
    TitanicServiceError,
    TitanicTimeoutError,
    UnknownRequestError,
    UsageError,
)
from titanic.protocol.failure import split_last_error
from titanic.protocol.tsp import canonical_uuid

if TYPE_CHECKING:
    from titanic.client.aio import AsyncTitanicClient
    from titanic.client.tsp import TitanicClient

#: Longest one wait for a result runs when the caller set no timeout, in seconds; it is then
#: waited for again.
WAIT_ROUND_S = 60.0
#: Least time one wait is given, in seconds, so that even `timeout=0` asks the broker once
#: with time for its answer.
LEAST_ROUND_S = 0.5
#: Pause before asking again after the store failed to answer (`500`), in seconds.
STORE_ERROR_PAUSE_S = 0.5

_ATTEMPTS = re.compile(r" \(after (\d+) attempts\)\Z")
_TYPE_NAME = re.compile(r"\A[^\s:]+\Z")


def task_failed(request_id: str, fetched: Fetched) -> TaskFailed:
    """The TaskFailed for a request that failed or expired, from what titanic.reply said: the
    first line is the error (`Type: message`, then ` (after N attempts)` when the attempts
    were spent), the lines after it the traceback."""
    reason, traceback = split_last_error(fetched.text)
    attempts = None
    summary = reason
    if (counted := _ATTEMPTS.search(summary)) is not None:
        attempts = int(counted.group(1))
        summary = summary[:counted.start()]
    type_name, _, message = summary.partition(": ")
    if not _TYPE_NAME.match(type_name):
        type_name, message = "", summary  # not an exception's: a timeout, an expiry
    return TaskFailed(request_id, fetched.state.value, reason or fetched.state.value,
                      type_name=type_name, message=message, traceback=traceback,
                      attempts=attempts)


class _Pending:
    """Still waiting: the result is not there yet (or the store could not say)."""

    def __init__(self, store_error: str = "") -> None:
        self.store_error = store_error


def settle(request_id: str, fetched: Fetched) -> Any:
    """The task's return value, or a _Pending; TaskFailed, UnknownRequestError or
    ProtocolError (a reply that is not a task's result) when the request is over."""
    state = fetched.state
    if state is ReplyState.DONE:
        from titanic.tasks.codec import decode_result

        return decode_result(fetched.reply)
    if state in (ReplyState.FAILED, ReplyState.EXPIRED, ReplyState.CANCELLED):
        raise task_failed(request_id, fetched)
    if state is ReplyState.UNKNOWN:
        raise UnknownRequestError(f"request {request_id} is unknown: never stored, closed, or "
                                  "purged after its reply's time to live")
    return _Pending(fetched.text if state is ReplyState.ERROR else "")


def part_values(part: Sequence[bytes]) -> list[Any]:
    """The values one part of a task's reply carries: those a yielding task yielded, or the
    return value of one that returns (its reply is one part)."""
    from titanic.tasks.codec import decode_parts, decode_result, is_task_stream

    return decode_parts(part) if is_task_stream(part) else [decode_result(part)]


def _request_id(value: str) -> str:
    canonical = canonical_uuid(value) if isinstance(value, str) else None
    if canonical is None:
        raise UsageError(f"{value!r} is not a request UUID (32 hex digits, or 8-4-4-4-12)")
    return canonical


class _Waiting:
    """One wait for a result: its deadline, and what to say when it passes."""

    def __init__(self, request_id: str, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise UsageError("timeout must be 0 or more seconds, or None to wait for ever")
        self.request_id = request_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def next_round(self) -> float:
        """Seconds the next wait may take."""
        if self.deadline is None:
            return WAIT_ROUND_S
        return max(LEAST_ROUND_S, self.deadline - time.monotonic())

    def over(self, pending: _Pending) -> bool:
        """True once the deadline has passed; raises what the caller is told then."""
        if self.deadline is None or time.monotonic() < self.deadline:
            return False
        if pending.store_error:
            raise TitanicServiceError(f"request {self.request_id}: the store did not answer "
                                      f"within {self.timeout:g} s: {pending.store_error}")
        raise TitanicTimeoutError(f"request {self.request_id} has no result after "
                                  f"{self.timeout:g} s: it is still pending")

    def pause(self) -> float:
        """Seconds to wait before asking again after a store error."""
        if self.deadline is None:
            return STORE_ERROR_PAUSE_S
        return max(0.0, min(STORE_ERROR_PAUSE_S, self.deadline - time.monotonic()))


class Handle:
    """A submitted task's request: `id` is its UUID; `result()` waits for its return value."""

    def __init__(self, request_id: str, *, client: TitanicClient | None = None) -> None:
        self.id = _request_id(request_id)
        self._client = client

    def __repr__(self) -> str:
        return f"Handle({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Handle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def client(self) -> TitanicClient:
        """The client this handle asks: its own, else this thread's default one."""
        if self._client is not None:
            return self._client
        from titanic.tasks.clients import default_client

        return default_client()

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value, once there is one; waits at most `timeout` seconds (None:
        as long as it takes).

        Raises TaskFailed when every attempt failed or the request expired, UnknownRequestError
        when Titanic knows no such request (closed, purged), TitanicTimeoutError when it is
        still pending after `timeout` (or the broker does not answer), ProtocolError when the
        reply is not a task's result.
        """
        waiting = _Waiting(self.id, timeout)
        while True:
            outcome = settle(self.id, self.client.wait(self.id, waiting.next_round()))
            if not isinstance(outcome, _Pending):
                return outcome
            if not waiting.over(outcome) and outcome.store_error:
                time.sleep(waiting.pause())

    def follow(self, timeout: float | None = None) -> Iterator[Any]:
        """Each value the task yields, as soon as it is stored, until it is done (a task that
        returns instead: its return value, once); at most `timeout` seconds in all (None: as
        long as it takes). Across a reconnect it goes on after the last value given. Raises
        as result() does."""
        try:
            for part in self.client.follow(self.id, timeout=timeout):
                yield from part_values(part)
        except RequestFailedError:
            raise task_failed(self.id, self.client.fetch(self.id)) from None

    def state(self) -> ReplyState:
        """Where the request stands now (asked once): pending, done, failed, ..."""
        return self.client.fetch(self.id).state

    def cancel(self) -> str:
        """Cancel the task's request (see TitanicClient.cancel): the state it was in."""
        return self.client.cancel(self.id)

    def close(self) -> None:
        """Delete the request and its result from the store (fine if it is already gone)."""
        self.client.close_request(self.id)


class AsyncHandle:
    """A submitted task's request, for asyncio code: Handle's calls as coroutines."""

    def __init__(self, request_id: str, *, client: AsyncTitanicClient | None = None) -> None:
        self.id = _request_id(request_id)
        self._client = client

    def __repr__(self) -> str:
        return f"AsyncHandle({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def client(self) -> AsyncTitanicClient:
        """The client this handle asks: its own, else the running event loop's default one."""
        if self._client is not None:
            return self._client
        from titanic.tasks.clients import default_async_client

        return default_async_client()

    async def follow(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """Each value the task yields as it is stored, as Handle.follow, as an async
        iterator."""
        try:
            async for part in self.client.follow(self.id, timeout=timeout):
                for value in part_values(part):
                    yield value
        except RequestFailedError:
            raise task_failed(self.id, await self.client.fetch(self.id)) from None

    async def result(self, timeout: float | None = None) -> Any:
        """The task's return value, as Handle.result (the same errors)."""
        import asyncio

        waiting = _Waiting(self.id, timeout)
        while True:
            fetched = await self.client.wait(self.id, waiting.next_round())
            outcome = settle(self.id, fetched)
            if not isinstance(outcome, _Pending):
                return outcome
            if not waiting.over(outcome) and outcome.store_error:
                await asyncio.sleep(waiting.pause())

    async def state(self) -> ReplyState:
        """Where the request stands now (asked once)."""
        return (await self.client.fetch(self.id)).state

    async def cancel(self) -> str:
        """Cancel the task's request (see TitanicClient.cancel): the state it was in."""
        return await self.client.cancel(self.id)

    async def close(self) -> None:
        """Delete the request and its result from the store (fine if it is already gone)."""
        await self.client.close_request(self.id)
