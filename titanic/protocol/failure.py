"""Failure reports: how a titanic worker tells the dispatcher its handler raised.

A failure report is an ordinary MDP reply of exactly three frames:

    "titanic.failure", kind, error

`kind` is "retry" (the dispatcher tries the request again after a backoff, and fails it for
good once its attempts are spent) or "permanent" (the request fails at once). `error` is the
UTF-8 text of the exception, its type and message: "ValueError: bad input".

It is a convention on top of 7/MDP and 18/MDP, not a change to them: the broker carries it like
any reply, a foreign MDP worker never sends it and is served as before, and a plain MDP client
sees three frames it can read. A reply is taken for a failure report only when it has exactly
this shape, so the one reply a foreign worker cannot send as a result is these three frames.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

#: The first frame of every failure report.
MARKER = b"titanic.failure"
#: Longest error text sent, in bytes: the text goes into the store's last_error.
MAX_ERROR_BYTES = 1000


class FailureKind(enum.Enum):
    """Whether a failed request may be tried again."""

    RETRY = b"retry"
    PERMANENT = b"permanent"


@dataclass(frozen=True)
class FailureReport:
    """A handler's failure as the dispatcher reads it."""

    kind: FailureKind
    error: str

    @property
    def permanent(self) -> bool:
        """True if the request must not be tried again."""
        return self.kind is FailureKind.PERMANENT


def describe_exception(exc: BaseException) -> str:
    """`Type: message` (or just `Type` when the message is empty), on one line."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def build_failure(kind: FailureKind, error: str) -> list[bytes]:
    """The reply frames reporting a failure; the error text is cut to MAX_ERROR_BYTES."""
    encoded = error.encode("utf-8", "replace")[:MAX_ERROR_BYTES]
    return [MARKER, kind.value, encoded.decode("utf-8", "ignore").encode()]


def parse_failure(frames: Sequence[bytes]) -> FailureReport | None:
    """The failure a reply reports, or None if it is an ordinary reply."""
    if len(frames) != 3 or frames[0] != MARKER:
        return None
    try:
        kind = FailureKind(frames[1])
    except ValueError:
        return None
    return FailureReport(kind, frames[2].decode("utf-8", "replace") or "no error text")
