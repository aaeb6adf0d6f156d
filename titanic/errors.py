"""The exception tree: every error titanic raises derives from TitanicError.

It is split by cause, so a caller can tell whose fault an error is: a peer's (a malformed or
refusing answer from the network), our own caller's (the API used in a way it does not allow),
the store's, or the configuration's.
"""

from __future__ import annotations


class TitanicError(Exception):
    """Something went wrong in titanic."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


# -- a peer broke the protocol, refused us or did not answer --------------------------------------

class ProtocolError(TitanicError, ValueError):
    """A peer's message does not follow the wire protocol."""


class TitanicTimeoutError(TitanicError, TimeoutError):
    """No reply arrived in time."""


class UnreachableError(TitanicTimeoutError):
    """No broker can answer: nothing listens at its endpoint."""


class FreelanceTimeoutError(TitanicTimeoutError):
    """No freelance server answered in time: every one was silent, dead or unreachable."""


class ServiceRefusedError(TitanicError):
    """A freelance server answered with an error status: no such service there (404), or a
    malformed request (400)."""

    def __init__(self, code: int, reason: str, service: str = "") -> None:
        self.code = code
        self.reason = reason
        where = f" for {service!r}" if service else ""
        super().__init__(f"the server refused the request{where}: {code} {reason}")


class TitanicServiceError(TitanicError):
    """The Titanic service answered with an error status."""


class BrokerRefusedError(TitanicError):
    """The broker refused to route the request (a full queue, a request over a limit)."""

    def __init__(self, code: int, reason: str, service: str = "") -> None:
        self.code = code
        self.reason = reason
        where = f" for {service!r}" if service else ""
        super().__init__(f"the broker refused the request{where}: {code} {reason}")

    @property
    def retryable(self) -> bool:
        """True when the same request may succeed later (503: a full queue)."""
        return self.code == 503


class HandshakeRefusedError(TitanicError):
    """The broker refused the security handshake: the key, the server key or the mechanism."""


class IdentityRefusedError(HandshakeRefusedError):
    """The broker will not tell this dispatcher who sends each request: its CURVE key is not in
    the broker's admin folder (--curve-admin)."""


class UnknownRequestError(TitanicError, LookupError):
    """Titanic knows no such request: never stored, closed, purged after its reply's time to
    live, or (with CURVE) another key's."""


class RequestFailedError(TitanicServiceError):
    """The request failed for good or expired undelivered: it will have no reply (raised while
    following its reply; str() says how it ended)."""


class TaskFailed(TitanicError):
    """A task's request ended without a result: every attempt failed, or it expired.

    `type_name`, `message` and `traceback` are the remote exception's ("" where there was none:
    an attempt that timed out, an expired request); `attempts` is how many were made when the
    dispatcher said so, else None; `state` is "failed" or "expired". str() is one line.
    """

    def __init__(self, request_id: str, state: str, reason: str, *, type_name: str = "",
                 message: str = "", traceback: str = "", attempts: int | None = None) -> None:
        self.request_id = request_id
        self.state = state
        self.reason = reason
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.attempts = attempts
        super().__init__(f"request {request_id} {state}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_task_failed, (self.request_id, self.state, self.reason, self.type_name,
                                       self.message, self.traceback, self.attempts))


def _rebuild_task_failed(request_id: str, state: str, reason: str, type_name: str,
                         message: str, traceback: str, attempts: int | None) -> TaskFailed:
    return TaskFailed(request_id, state, reason, type_name=type_name, message=message,
                      traceback=traceback, attempts=attempts)


# -- our own caller misused the API ---------------------------------------------------------------

class UsageError(TitanicError, ValueError):
    """The API was asked for something the protocol or the object's state does not allow."""


class EndpointError(UsageError):
    """An endpoint is not one ZeroMQ can connect to or bind."""


class RequestTooLargeError(UsageError):
    """The request is larger than the server takes: it was not sent."""


class ClientClosedError(UsageError):
    """The client was used after close()."""


# -- the store ------------------------------------------------------------------------------------

class StoreError(TitanicError):
    """The request store failed."""


class InvalidRequestError(StoreError, ValueError):
    """The request is malformed (bad UUID, body too large, ...)."""


class MissingDatabaseError(StoreError):
    """The database does not exist: `titanic db upgrade` makes it."""


class SchemaError(StoreError):
    """The database schema is not the one this version of titanic expects."""


class StoreMismatchError(StoreError):
    """Another store already serves these brokers: dispatchers on the same brokers must share
    one store."""


# -- configuration --------------------------------------------------------------------------------

class CurveKeyError(TitanicError):
    """A CURVE key file is missing or malformed."""


class StoreKeyError(TitanicError):
    """A store key file (encryption at rest) is missing or malformed."""


class BindError(TitanicError):
    """An address to listen on cannot be bound: in use by another process, or not this host's."""


class PermanentError(TitanicError):
    """The request cannot succeed: raised by a worker's handler, it fails at once, untried again.

    `raise PermanentError from exc` reports `exc` (its type and message) as the reason.
    """
