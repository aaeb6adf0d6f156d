"""The exception tree: every error titanic raises derives from TitanicError."""

from __future__ import annotations


class TitanicError(Exception):
    """Something went wrong in titanic."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ProtocolError(TitanicError, ValueError):
    """A message does not follow the wire protocol."""


class TitanicTimeoutError(TitanicError, TimeoutError):
    """No reply arrived in time."""


class ClientClosedError(TitanicError):
    """The client was used after close()."""


class StoreError(TitanicError):
    """The request store failed."""


class InvalidRequestError(StoreError, ValueError):
    """The request is malformed (bad UUID, body too large, ...)."""


class NotFoundError(StoreError, KeyError):
    """No request with this UUID is stored."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "request not found"


class SchemaError(StoreError):
    """The database schema is not the one this version of titanic expects."""


class StoreMismatchError(StoreError):
    """Another store already serves these brokers: dispatchers on the same brokers must share
    one store."""


class CurveKeyError(TitanicError):
    """A CURVE key file is missing or malformed."""


class StoreKeyError(TitanicError):
    """A store key file (encryption at rest) is missing or malformed."""


class HandshakeRefusedError(TitanicError):
    """The broker refused the security handshake: the key, the server key or the mechanism."""
