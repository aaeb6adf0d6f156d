"""titanic: durable request-reply over ZeroMQ Majordomo (7/MDP, 18/MDP, 8/MMI, 9/TSP).

The clients, the worker and the task API are imported on first use, so `import titanic` stays
cheap (the CLI starts by importing it): neither ZeroMQ nor msgpack is loaded until used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from titanic.errors import (
    ClientClosedError,
    InvalidRequestError,
    PermanentError,
    ProtocolError,
    SchemaError,
    StoreError,
    TaskFailed,
    TitanicError,
    TitanicServiceError,
    TitanicTimeoutError,
    UnknownRequestError,
    UsageError,
)
from titanic.protocol.mdp import Dialect

if TYPE_CHECKING:
    from titanic.async_client import AsyncTitanicClient
    from titanic.client import Client
    from titanic.task_clients import configure
    from titanic.task_handles import AsyncHandle, Handle
    from titanic.tasks import Task, task
    from titanic.tsp_client import Fetched, ReplyState, TitanicClient
    from titanic.worker import Worker

__version__ = "0.1.0"

#: Public names imported on first use, and the module each comes from.
_LAZY = {
    "AsyncHandle": "titanic.task_handles",
    "AsyncTitanicClient": "titanic.async_client",
    "Client": "titanic.client",
    "Fetched": "titanic.tsp_client",
    "Handle": "titanic.task_handles",
    "ReplyState": "titanic.tsp_client",
    "Task": "titanic.tasks",
    "TitanicClient": "titanic.tsp_client",
    "Worker": "titanic.worker",
    "configure": "titanic.task_clients",
    "task": "titanic.tasks",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'titanic' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncHandle",
    "AsyncTitanicClient",
    "Client",
    "ClientClosedError",
    "Dialect",
    "Fetched",
    "Handle",
    "InvalidRequestError",
    "PermanentError",
    "ProtocolError",
    "ReplyState",
    "SchemaError",
    "StoreError",
    "Task",
    "TaskFailed",
    "TitanicClient",
    "TitanicError",
    "TitanicServiceError",
    "TitanicTimeoutError",
    "UnknownRequestError",
    "UsageError",
    "Worker",
    "__version__",
    "configure",
    "task",
]
