"""Tasks served by the task tests (`worker run example_tasks` loads this module by name)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import titanic
from titanic import PermanentError

#: How often each task ran in this process, by name.
runs: Counter[str] = Counter()
_lock = threading.Lock()


def _ran(name: str) -> None:
    with _lock:
        runs[name] += 1


@titanic.task
def resize(image: bytes, width: int, *, keep_ratio: bool = True) -> dict[str, Any]:
    """A task with bytes, a positional and a keyword argument; the result holds bytes too."""
    _ran("resize")
    return {"size": len(image), "width": width, "keep_ratio": keep_ratio,
            "head": image[:2], "nested": [1, [2.5, None], {"k": b"\x00"}]}


@titanic.task(name="examples.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Every argument back, as received."""
    _ran("examples.echo")
    return {"args": list(args), "kwargs": kwargs}


@titanic.task
def explode(message: str) -> None:
    """Always raises, from a function of its own (to see it in the traceback)."""
    _ran("explode")
    _check(message)


def _check(message: str) -> None:
    raise ValueError(message)


@titanic.task
def refuse(message: str) -> None:
    """Fails at once, without retries."""
    _ran("refuse")
    raise PermanentError(message)


@titanic.task
def unpackable() -> set[int]:
    """Returns a value msgpack cannot carry."""
    _ran("unpackable")
    return {1, 2}


def not_a_task(text: bytes) -> bytes:
    """A plain function beside the tasks: not served by `worker run example_tasks`."""
    return text
