"""The task being run on this thread, for the task's own code: `titanic.current()`.

    @titanic.task
    def report(rows: int) -> int:
        for start in range(0, rows, 1000):
            if titanic.current().cancelled:   # a client ran `titanic cancel UUID`
                raise titanic.PermanentError("cancelled")
            ...

The worker's side (titanic.worker.tasks) sets it around each call. `cancelled` asks the
worker's Titanic service (`titanic.cancelled`, through the default client, which `titanic
worker run` points at its brokers) at most every CHECK_INTERVAL_S seconds and remembers a yes:
a cooperative check, which the task makes where stopping is safe. A cancelled request's reply
is discarded whatever the task does.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from titanic.errors import TitanicError, UsageError

log = logging.getLogger("titanic.worker")

#: Seconds between two questions to the service from one task (a loop may check often).
CHECK_INTERVAL_S = 0.5
#: Seconds one question may take: a task is not held up long by an unreachable broker.
CHECK_TIMEOUT_S = 1.0

_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "titanic_current_task", default=None)


@dataclass
class TaskContext:
    """The task call a worker is running: its service and, when its dispatcher said, its
    request's UUID."""

    service: str
    request_id: str | None
    _cancelled: bool = field(default=False, repr=False)
    _asked_at: float = field(default=float("-inf"), repr=False)

    @property
    def cancelled(self) -> bool:
        """Whether a client cancelled this request (False when it cannot be told: no UUID, a
        server without titanic.cancelled, or no answer within CHECK_TIMEOUT_S)."""
        if self._cancelled or self.request_id is None:
            return self._cancelled
        now = time.monotonic()
        if now - self._asked_at < CHECK_INTERVAL_S:
            return False
        self._asked_at = now
        from titanic.tasks.clients import default_client

        try:
            self._cancelled = default_client().is_cancelled(self.request_id,
                                                            within=CHECK_TIMEOUT_S)
        except TitanicError as exc:
            log.debug("request %s: cannot tell whether it was cancelled: %s", self.request_id,
                      exc)
        return self._cancelled


def current() -> TaskContext:
    """The task call this thread (or asyncio task) is running; UsageError outside one."""
    found = _current.get()
    if found is None:
        raise UsageError("titanic.current() is for the code of a task a worker is running")
    return found


@contextmanager
def running(service: str, request_id: str | None) -> Iterator[TaskContext]:
    """Make `current()` this call for the duration of the block (the worker's side)."""
    context = TaskContext(service, request_id)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
