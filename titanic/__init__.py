"""titanic: durable request-reply over ZeroMQ Majordomo (7/MDP, 18/MDP, 8/MMI, 9/TSP).

The clients and the worker are imported on first use, so `import titanic` stays cheap (the CLI
starts by importing it).
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
    TitanicError,
    TitanicServiceError,
    TitanicTimeoutError,
    UsageError,
)
from titanic.protocol.mdp import Dialect

if TYPE_CHECKING:
    from titanic.async_client import AsyncTitanicClient
    from titanic.client import Client
    from titanic.tsp_client import Fetched, ReplyState, TitanicClient
    from titanic.worker import Worker

__version__ = "0.1.0"

#: Public names imported on first use, and the module each comes from.
_LAZY = {
    "AsyncTitanicClient": "titanic.async_client",
    "Client": "titanic.client",
    "Fetched": "titanic.tsp_client",
    "ReplyState": "titanic.tsp_client",
    "TitanicClient": "titanic.tsp_client",
    "Worker": "titanic.worker",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'titanic' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncTitanicClient",
    "Client",
    "ClientClosedError",
    "Dialect",
    "Fetched",
    "InvalidRequestError",
    "PermanentError",
    "ProtocolError",
    "ReplyState",
    "SchemaError",
    "StoreError",
    "TitanicClient",
    "TitanicError",
    "TitanicServiceError",
    "TitanicTimeoutError",
    "UsageError",
    "Worker",
    "__version__",
]
