"""titanic: durable request-reply over ZeroMQ Majordomo (7/MDP, 18/MDP, 8/MMI, 9/TSP)."""

from __future__ import annotations

from titanic.errors import (
    ClientClosedError,
    InvalidRequestError,
    ProtocolError,
    SchemaError,
    StoreError,
    TitanicError,
    TitanicServiceError,
    TitanicTimeoutError,
    UsageError,
)
from titanic.protocol.mdp import Dialect

__version__ = "0.1.0"

__all__ = [
    "ClientClosedError",
    "Dialect",
    "InvalidRequestError",
    "ProtocolError",
    "SchemaError",
    "StoreError",
    "TitanicError",
    "TitanicServiceError",
    "TitanicTimeoutError",
    "UsageError",
    "__version__",
]
