"""Tasks: plain Python functions called through Titanic, their arguments and result in msgpack.

    @titanic.task
    def resize(image: bytes, width: int) -> dict: ...

    handle = resize.submit(image, width=100)   # stored durably; returns at once
    handle.result(timeout=30)                  # the return value, or TaskFailed
    resize(image, width=100)                   # still a local call

A task's service name is its function's name, or the `name=` given. `titanic worker run
pkg.module` serves every task defined in that module. Defining a task imports neither ZeroMQ
nor msgpack; submitting one does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from titanic.errors import UsageError
from titanic.settings import MAX_SERVICE_NAME_BYTES

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from titanic.client.aio import AsyncTitanicClient
    from titanic.client.tsp import TitanicClient
    from titanic.tasks.handles import AsyncHandle, Handle

P = ParamSpec("P")
R = TypeVar("R")

#: Service names a task may not take: the broker's (8/MMI) and Titanic's own.
RESERVED_PREFIXES = ("mmi.", "titanic.")


def check_task_name(name: str) -> str:
    """`name` if it can be a task's service name; UsageError saying why not."""
    if not isinstance(name, str) or not name:
        raise UsageError("a task's name must be a non-empty str")
    if len(name.encode("utf-8", "replace")) > MAX_SERVICE_NAME_BYTES:
        raise UsageError(f"task name {name[:40]!r}... is over {MAX_SERVICE_NAME_BYTES} bytes")
    if name.startswith(RESERVED_PREFIXES):
        raise UsageError(f"task name {name!r}: names starting "
                         f"{' or '.join(RESERVED_PREFIXES)} are reserved")
    return name


class Task(Generic[P, R]):
    """A function that runs locally when called and through Titanic when submitted."""

    def __init__(self, function: Callable[P, R], name: str | None = None) -> None:
        if not callable(function):
            raise UsageError(f"a task must be a function, not {type(function).__name__}")
        self.function = function
        self.name = check_task_name(name if name is not None else function.__name__)
        functools.update_wrapper(self, function)

    def __repr__(self) -> str:
        return f"<titanic task {self.name!r}: {self.function.__module__}." \
               f"{self.function.__qualname__}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, now, as if it were not a task."""
        return self.function(*args, **kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Handle:
        """Store a request to run this task with these arguments; returns its Handle once the
        request is stored. TypeError naming the argument, before anything is sent, when one
        is a value msgpack cannot carry."""
        return self.submit_with(args, kwargs)

    async def submit_async(self, *args: P.args, **kwargs: P.kwargs) -> AsyncHandle:
        """submit() for asyncio code: returns an AsyncHandle."""
        return await self.submit_with_async(args, kwargs)

    def submit_with(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    *, key: str | None = None, not_before: datetime | timedelta | None = None,
                    priority: int = 0, client: TitanicClient | None = None) -> Handle:
        """submit() with its options: `key` is the idempotency key (a request with this key
        already stored is not stored again: its handle is returned), `not_before` a time (aware)
        or a delay before which the call is not run, `priority` its rank among this task's
        waiting calls (higher first), `client` the TitanicClient to use instead of this
        thread's default one."""
        from titanic.tasks.handles import Handle

        frames = self._frames(args, kwargs)
        chosen = client
        if chosen is None:
            from titanic.tasks.clients import default_client

            chosen = default_client()
        request_id = chosen.submit(self.name, *frames, key=key, not_before=not_before,
                                   priority=priority)
        return Handle(request_id, client=client)

    async def submit_with_async(self, args: Sequence[Any] = (),
                                kwargs: Mapping[str, Any] | None = None, *,
                                key: str | None = None,
                                not_before: datetime | timedelta | None = None,
                                priority: int = 0,
                                client: AsyncTitanicClient | None = None) -> AsyncHandle:
        """submit_with() for asyncio code: `client` is an AsyncTitanicClient (default: the
        running event loop's)."""
        from titanic.tasks.handles import AsyncHandle

        frames = self._frames(args, kwargs)
        chosen = client
        if chosen is None:
            from titanic.tasks.clients import default_async_client

            chosen = default_async_client()
        request_id = await chosen.submit(self.name, *frames, key=key, not_before=not_before,
                                         priority=priority)
        return AsyncHandle(request_id, client=client)

    def _frames(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None) -> list[bytes]:
        from titanic.tasks.codec import encode_call

        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise TypeError(f"{self.name}: args must be a list or tuple of the arguments")
        return encode_call(args, kwargs or {}, self.name)


@overload
def task(function: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(*, name: str | None = None) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(function: Callable[P, R] | None = None, /, *, name: str | None = None
         ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task: `@task`, or `@task(name="images.resize")` to name its service
    (default: the function's name)."""
    if function is not None:
        return Task(function, name)

    def decorate(inner: Callable[P, R]) -> Task[P, R]:
        return Task(inner, name)

    return decorate


def tasks_defined_in(module: object) -> list[Task[Any, Any]]:
    """The tasks a module defines (not those it imports from elsewhere), in definition order."""
    module_name = getattr(module, "__name__", None)
    found: list[Task[Any, Any]] = []
    for value in vars(module).values():
        if isinstance(value, Task) and value.function.__module__ == module_name \
                and value not in found:
            found.append(value)
    return found
