"""Several workers for one service in one process, each its own broker connection and thread;
and a handler made from a plain function, as `titanic worker run pkg.module:function` uses."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

import zmq

from titanic.errors import TitanicError
from titanic.protocol.mdp import Frames
from titanic.worker import Handler, Reply, Worker


class TargetError(TitanicError):
    """A worker function could not be found or imported."""


def load_function(target: str) -> Callable[..., Any]:
    """The function named by `pkg.module:function` (the part after the colon may be dotted)."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise TargetError(f"{target!r} is not of the form pkg.module:function")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module's own code raised while it was imported
        raise TargetError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(f"{module_name!r} has no {attribute!r}") from None
    if not callable(found):
        raise TargetError(f"{target} is a {type(found).__name__}, not a function")
    return found  # type: ignore[no-any-return]


def function_handler(function: Callable[..., Any]) -> Handler:
    """A handler calling `function(*frames)`: the request frames as bytes arguments; the result
    (bytes, str, or a list of them) is the reply, and an exception a failure report."""

    def handle(frames: Frames) -> Reply:
        return function(*frames)  # type: ignore[no-any-return]

    return handle


class WorkerGroup:
    """`count` workers serving one service with one handler, each on its own thread and broker
    connection, so up to `count` requests run at once; `run()` returns after `stop()`."""

    def __init__(self, count: int, make: Callable[[zmq.Context[zmq.Socket[bytes]]], Worker]
                 ) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.workers = [make(self._context) for _ in range(count)]

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
