"""titanic: durable request-reply over ZeroMQ Majordomo (7/MDP, 18/MDP, 8/MMI, 9/TSP).

The clients, the worker and the task API are imported on first use, so `import titanic` stays
cheap (the CLI starts by importing it): neither ZeroMQ nor msgpack is loaded until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from titanic._lazy import lazy_names
from titanic.errors import (
    ClientClosedError,
    FreelanceTimeoutError,
    InvalidRequestError,
    PermanentError,
    ProtocolError,
    RequestFailedError,
    SchemaError,
    ServiceRefusedError,
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
    from titanic.client.aio import AsyncTitanicClient
    from titanic.client.freelance import AsyncFreelanceClient, FreelanceClient
    from titanic.client.mdp import Client
    from titanic.client.tsp import Fetched, ReplyState, TitanicClient
    from titanic.tasks.clients import configure
    from titanic.tasks.current import current
    from titanic.tasks.define import Task, task
    from titanic.tasks.handles import AsyncHandle, Handle
    from titanic.worker.freelance import FreelanceServer
    from titanic.worker.mdp import Worker

__version__ = "0.1.0"

#: Public names imported on first use, and the module each comes from.
_LAZY = {
    "AsyncFreelanceClient": "titanic.client.freelance",
    "AsyncHandle": "titanic.tasks.handles",
    "AsyncTitanicClient": "titanic.client.aio",
    "Client": "titanic.client.mdp",
    "Fetched": "titanic.client.tsp",
    "FreelanceClient": "titanic.client.freelance",
    "FreelanceServer": "titanic.worker.freelance",
    "Handle": "titanic.tasks.handles",
    "ReplyState": "titanic.client.tsp",
    "Task": "titanic.tasks.define",
    "TitanicClient": "titanic.client.tsp",
    "Worker": "titanic.worker.mdp",
    "configure": "titanic.tasks.clients",
    "current": "titanic.tasks.current",
    "task": "titanic.tasks.define",
}

__getattr__ = lazy_names(__name__, _LAZY)


__all__ = [
    "AsyncFreelanceClient",
    "AsyncHandle",
    "AsyncTitanicClient",
    "Client",
    "ClientClosedError",
    "Dialect",
    "Fetched",
    "FreelanceClient",
    "FreelanceServer",
    "FreelanceTimeoutError",
    "Handle",
    "InvalidRequestError",
    "PermanentError",
    "ProtocolError",
    "ReplyState",
    "RequestFailedError",
    "SchemaError",
    "ServiceRefusedError",
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
    "current",
    "task",
]
