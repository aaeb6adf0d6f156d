"""Failure reports: how a titanic worker tells the dispatcher its handler raised.

A failure report is an ordinary MDP reply of three or four frames:

    "titanic.failure", kind, error [, traceback]

`kind` is "retry" (the dispatcher tries the request again after a backoff, and fails it for
good once its attempts are spent) or "permanent" (the request fails at once). `error` is the
UTF-8 text of the exception on one line, its type and message: "ValueError: bad input".
The optional fourth frame is the handler's traceback, UTF-8, at most MAX_TRACEBACK_BYTES.

The dispatcher keeps the report as the request's `last_error`: the error on the first line,
the traceback (when there is one) on the lines after it, so whatever shows one line of it
shows the error. `split_last_error` takes such a text apart again.

It is a convention on top of 7/MDP and 18/MDP, not a change to them: the broker carries it like
any reply, a foreign MDP worker never sends it and is served as before, and a plain MDP client
sees frames it can read. A reply is taken for a failure report only when it has exactly this
shape, so the one reply a foreign worker cannot send as a result is these three or four frames.
"""

from __future__ import annotations

import enum
import traceback as tb
from collections.abc import Collection, Sequence
from dataclasses import dataclass

#: The first frame of every failure report.
MARKER = b"titanic.failure"
#: Longest error text sent, in bytes: the text goes into the store's last_error.
MAX_ERROR_BYTES = 1000
#: Longest traceback sent, in bytes; a longer one keeps its end (the innermost calls).
MAX_TRACEBACK_BYTES = 8192
#: The first line of a traceback that lost its beginning to MAX_TRACEBACK_BYTES.
CUT_MARK = "[traceback cut: its first lines are left out]\n"


class FailureKind(enum.Enum):
    """Whether a failed request may be tried again."""

    RETRY = b"retry"
    PERMANENT = b"permanent"


@dataclass(frozen=True)
class FailureReport:
    """A handler's failure as the dispatcher reads it: the error on one line, and the
    traceback ("" when none came)."""

    kind: FailureKind
    error: str
    traceback: str = ""

    @property
    def permanent(self) -> bool:
        """True if the request must not be tried again."""
        return self.kind is FailureKind.PERMANENT

    @property
    def last_error(self) -> str:
        """The text the store keeps: the error, then the traceback on the lines after it."""
        return f"{self.error}\n{self.traceback}" if self.traceback else self.error


def describe_exception(exc: BaseException) -> str:
    """`Type: message` (or just `Type` when the message is empty), on one line."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def format_traceback(exc: BaseException, skip: Collection[str] = ()) -> str:
    """The exception's traceback as Python prints it (its causes included), cut to
    MAX_TRACEBACK_BYTES by leaving out its first lines. Its outermost calls made in the modules
    named in `skip` (the worker's own, above the user's function) are left out."""
    trace = exc.__traceback__
    while trace is not None and trace.tb_frame.f_globals.get("__name__") in skip:
        trace = trace.tb_next
    lines = tb.format_exception(type(exc), exc, trace)
    return _keep_end("".join(lines).rstrip("\n"))


def build_failure(kind: FailureKind, error: str, traceback: str = "") -> list[bytes]:
    """The reply frames reporting a failure: the error on one line, cut to MAX_ERROR_BYTES;
    with a traceback, a fourth frame of at most MAX_TRACEBACK_BYTES."""
    encoded = _one_line(error).encode("utf-8", "replace")[:MAX_ERROR_BYTES]
    frames = [MARKER, kind.value, encoded.decode("utf-8", "ignore").encode()]
    if traceback:
        frames.append(_keep_end(traceback).encode("utf-8", "replace"))
    return frames


def parse_failure(frames: Sequence[bytes]) -> FailureReport | None:
    """The failure a reply reports, or None if it is an ordinary reply."""
    if len(frames) not in (3, 4) or frames[0] != MARKER:
        return None
    try:
        kind = FailureKind(frames[1])
    except ValueError:
        return None
    error = _one_line(frames[2].decode("utf-8", "replace")) or "no error text"
    trace = frames[3].decode("utf-8", "replace").strip("\n") if len(frames) == 4 else ""
    return FailureReport(kind, error, _keep_end(trace))


def split_last_error(text: str) -> tuple[str, str]:
    """A request's last_error as (its first line, the traceback after it or "")."""
    first, _, rest = text.partition("\n")
    return first, rest


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _keep_end(text: str) -> str:
    """`text`, or its end with CUT_MARK in front, in at most MAX_TRACEBACK_BYTES of UTF-8."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= MAX_TRACEBACK_BYTES:
        return text
    room = MAX_TRACEBACK_BYTES - len(CUT_MARK.encode())
    tail = encoded[-room:].decode("utf-8", "ignore")
    _, newline, whole_lines = tail.partition("\n")  # start on a line of its own
    return CUT_MARK + (whole_lines if newline and whole_lines else tail)
