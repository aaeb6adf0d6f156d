"""Workers for `titanic worker run` in one process: each its own broker connection and thread.

A target is either one plain function (`pkg.module:function`), called with the request frames
as bytes, or tasks (`pkg.module`: every task the module defines; `pkg.module:task`: that one),
called with their msgpack arguments (titanic.worker.tasks).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from titanic.errors import TitanicError
from titanic.protocol.mdp import Frames
from titanic.tasks.define import Task, tasks_defined_in
from titanic.worker.mdp import Handler, Reply, Worker

#: Makes one worker for a service and its handler, on the group's context.
WorkerMaker = Callable[[zmq.Context[zmq.Socket[bytes]], str, Handler], Worker]


class TargetError(TitanicError):
    """A worker function could not be found or imported."""


@dataclass(frozen=True)
class Target:
    """What `worker run` serves: one plain function, or tasks (then `function` is None)."""

    name: str
    function: Callable[..., Any] | None = None
    tasks: tuple[Task[Any, Any], ...] = ()


def load_target(target: str) -> Target:
    """The function or tasks named by `pkg.module:function` (the part after the colon may be
    dotted), or the tasks defined in `pkg.module`."""
    module_name, colon, attribute = target.partition(":")
    if colon and (not module_name or not attribute):
        raise TargetError(f"{target!r} is not of the form pkg.module:function or pkg.module")
    module = _import(module_name)
    if not colon:
        tasks = tasks_defined_in(module)
        if not tasks:
            raise TargetError(f"{module_name!r} defines no tasks (functions decorated with "
                              "@titanic.task); serve a plain function as pkg.module:function "
                              "--service NAME")
        _check_names(module_name, tasks)
        return Target(target, tasks=tuple(tasks))
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(f"{module_name!r} has no {attribute!r}") from None
    if isinstance(found, Task):
        return Target(target, tasks=(found,))
    if not callable(found):
        raise TargetError(f"{target} is a {type(found).__name__}, not a function")
    return Target(target, function=found)


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # whatever the module's own code raised while it was imported
        raise TargetError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc


def _check_names(module_name: str, tasks: list[Task[Any, Any]]) -> None:
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise TargetError(f"{module_name!r} defines two tasks named {task.name!r}")
        seen.add(task.name)


def function_handler(function: Callable[..., Any]) -> Handler:
    """A handler calling `function(*frames)`: the request frames as bytes arguments; the result
    (bytes, str, or a list of them) is the reply, and an exception a failure report."""

    def handle(frames: Frames) -> Reply:
        return function(*frames)  # type: ignore[no-any-return]

    return handle


class WorkerGroup:
    """`count` workers for each service, each on its own thread and broker connection, so up
    to `count` requests of each service run at once; `run()` returns after `stop()`."""

    def __init__(self, handlers: Mapping[str, Handler], count: int, make: WorkerMaker) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.workers = [make(self._context, service, handler)
                        for service, handler in handlers.items() for _ in range(count)]

    def stop(self) -> None:
        """Ask every worker to stop after the request in its hands; safe from signal handlers."""
        for worker in self.workers:
            worker.stop()

    def run(self) -> None:
        """Run the workers until stop(); the first one on this thread, the others beside it."""
        threads = [threading.Thread(target=worker.run, name=f"worker-{n}", daemon=True)
                   for n, worker in enumerate(self.workers[1:], start=1)]
        try:
            for thread in threads:
                thread.start()
            self.workers[0].run()
        finally:
            self.stop()
            for thread in threads:
                thread.join()
            self._context.term()
