"""What the Titanic services' answers (and a broker's silence) mean to a client, and how a call
spends its time: pure functions that the blocking and asyncio clients share."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from titanic.errors import (
    BrokerRefusedError,
    HandshakeRefusedError,
    ProtocolError,
    TitanicError,
    TitanicServiceError,
    UnknownRequestError,
    UnreachableError,
    UsageError,
)
from titanic.protocol import tsp
from titanic.protocol.mdp import Frames
from titanic.protocol.refusal import OVER_LIMIT, WORKER_GONE
from titanic.settings import quoted

#: Longest an mmi.service question asked to explain a timeout may take, in seconds.
DIAGNOSE_TIMEOUT_S = 1.0


class ReplyState(enum.Enum):
    """Where a request stands, as titanic.reply tells it."""

    DONE = "done"
    PENDING = "pending"
    UNKNOWN = "unknown"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class Fetched:
    """A titanic.reply answer: the state, the reply frames when done, and the server's text."""

    state: ReplyState
    reply: Frames
    text: str = ""

    def __str__(self) -> str:
        """The state, with the reason when there is one, on one line: `failed: ValueError: bad
        input` (a traceback on the lines after the reason is in `text` only)."""
        reason = self.text.partition("\n")[0]
        if reason and reason != self.state.value:
            return f"{self.state.value}: {reason}"
        return self.state.value


def service_name(service: object) -> bytes:
    """A service name as its frame; TypeError, before anything is sent, for a service that is
    neither str nor bytes."""
    if isinstance(service, str):
        return service.encode("utf-8")
    if isinstance(service, bytes):
        return service
    raise TypeError(f"the service is {type(service).__name__}: a service name is str or bytes")


def check_key(key: object) -> str | None:
    """An idempotency key as given; TypeError for one that is neither None nor str."""
    if key is None or isinstance(key, str):
        return key
    raise TypeError(f"the key is {type(key).__name__}: an idempotency key is a str")


#: Priorities a request may ask for (the store's range: titanic.store.types).
PRIORITY_RANGE = (-1_000_000, 1_000_000)


def request_options(not_before: datetime | timedelta | None,
                    priority: int) -> tsp.RequestOptions:
    """A submit's options: not sent before `not_before` (an aware time, or a delay from now)
    and `priority` within its service. UsageError for a naive time or a priority out of range,
    TypeError for values of the wrong type, before anything is sent."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"the priority is {type(priority).__name__}: a priority is an int")
    if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        raise UsageError(f"a priority must be from {PRIORITY_RANGE[0]} to {PRIORITY_RANGE[1]}, "
                         f"not {priority}")
    if not_before is None:
        return tsp.RequestOptions(None, priority)
    if isinstance(not_before, timedelta):
        not_before = datetime.now(UTC) + not_before
    elif not isinstance(not_before, datetime):
        raise TypeError(f"not_before is {type(not_before).__name__}: give an aware datetime "
                        "or a timedelta")
    elif not_before.tzinfo is None or not_before.utcoffset() is None:
        raise UsageError("not_before must say its time zone (an aware datetime, e.g. with "
                         "tzinfo=datetime.UTC)")
    return tsp.RequestOptions(max(0, int(not_before.timestamp() * 1000)), priority)


def encode_frames(frames: Sequence[bytes | str]) -> Frames:
    """Request frames with `str` ones as UTF-8; TypeError naming the first frame that is neither
    str nor bytes (nor another buffer, such as a bytearray), before anything is sent."""
    encoded: Frames = []
    for number, frame in enumerate(frames, 1):
        if isinstance(frame, str):
            try:
                encoded.append(frame.encode("utf-8"))
            except UnicodeEncodeError:
                raise ValueError(f"request frame {number} is a str that is not text (it holds "
                                 "a lone surrogate): give its bytes instead") from None
        elif isinstance(frame, bytes | bytearray | memoryview):
            encoded.append(frame)  # ZeroMQ sends any buffer as it is
        else:
            raise TypeError(f"request frame {number} is {type(frame).__name__}: a frame is bytes, "
                            "or str (sent as UTF-8)")
    return encoded


def encode_bodies(bodies: Iterable[bytes | str | Sequence[bytes | str]]) -> list[Frames]:
    """submit_many's request bodies as frames: a `bytes` or `str` is a body of one frame,
    another sequence a body of those frames (`str` ones as UTF-8); TypeError naming the first
    body that is neither."""
    encoded: list[Frames] = []
    for number, body in enumerate(bodies, 1):
        if isinstance(body, str | bytes | bytearray | memoryview):
            frames: Sequence[bytes | str] = [body]  # type: ignore[list-item]
        elif isinstance(body, Sequence):
            frames = cast("Sequence[bytes | str]", body)
        else:
            raise TypeError(f"request body {number} is {type(body).__name__}: a body is bytes, "
                            "str, or a sequence of frames")
        try:
            encoded.append(encode_frames(frames))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"request body {number}: {exc}") from None
    return encoded


def check_keys(keys: Sequence[str | None] | None, count: int) -> list[str | None]:
    """submit_many's idempotency keys, one per body (None: a random key); TypeError or
    ValueError if they do not match the bodies."""
    if keys is None:
        return [None] * count
    found = list(keys)
    if len(found) != count:
        raise ValueError(f"{len(found)} keys for {count} request bodies: give one key per "
                         "body (None for a random one)")
    for key in found:
        check_key(key)
    return found


def uuid_frame(request_id: str) -> bytes:
    """A request UUID, given in either form and case, as the frame TSP expects; TypeError if it
    is not a str, ProtocolError (one line, the value as text) if it is not a UUID."""
    if not isinstance(request_id, str):
        raise TypeError(f"request_id is {type(request_id).__name__}: a request UUID is a str, "
                        "as submit returns it")
    found = tsp.canonical_uuid(request_id)
    if found is None:
        raise ProtocolError(f"request_id {quoted(request_id)} is not a request UUID (32 hex "
                            "digits, or the 8-4-4-4-12 form)")
    return found.encode()


def parse_submitted(reply: Frames) -> str:
    """The UUID from a titanic.request answer; TitanicServiceError if it was refused."""
    if not reply:
        raise ProtocolError("titanic.request answered with no status frame")
    code = tsp.parse_status(reply[0])
    if code != tsp.Status.OK or len(reply) < 2:
        text = tsp.answer_text(reply) or "no reason given"
        raise TitanicServiceError(f"titanic.request refused the request: {code} {text}")
    return tsp.parse_uuid(reply[1])


def parse_submitted_many(reply: Frames, count: int) -> list[str]:
    """The `count` UUIDs from a batch titanic.request's answer, in order; TitanicServiceError
    if the batch was refused, ProtocolError if the answer lists another number of them."""
    if not reply:
        raise ProtocolError("titanic.request answered with no status frame")
    code = tsp.parse_status(reply[0])
    if code != tsp.Status.OK:
        text = tsp.answer_text(reply) or "no reason given"
        raise TitanicServiceError(f"titanic.request refused the batch: {code} {text}")
    if len(reply) != count + 1:
        raise ProtocolError(f"titanic.request answered a batch of {count} with "
                            f"{len(reply) - 1} UUIDs")
    return [tsp.parse_uuid(frame) for frame in reply[1:]]


def check_close(reply: Frames) -> None:
    """TitanicServiceError unless a titanic.close answer is 200."""
    if not reply or tsp.parse_status(reply[0]) != tsp.Status.OK:
        status = (f"{reply[0][:3].decode(errors='replace')} {tsp.answer_text(reply)}".strip()
                  if reply else "no status")
        raise TitanicServiceError(f"titanic.close failed: {status}")


def parse_cancel(frames: Frames) -> str:
    """A titanic.cancel answer: the state the request was in; UnknownRequestError for an
    unknown request, TitanicServiceError for another error."""
    code = tsp.parse_status(frames[0]) if frames else None
    if code == tsp.Status.OK and len(frames) > 1:
        return frames[1].decode("ascii", "replace")
    if code == tsp.Status.UNKNOWN:
        raise UnknownRequestError("unknown request: never stored, closed, or purged")
    raise TitanicServiceError(f"titanic.cancel failed: {tsp.answer_text(frames) or code}")


def parse_fetch(frames: Frames) -> Fetched:
    """A titanic.reply answer as a Fetched (the text in the status frame or after it)."""
    if not frames:
        raise ProtocolError("titanic.reply answered with no status frame")
    code = tsp.parse_status(frames[0])
    if code == tsp.Status.OK:
        return Fetched(ReplyState.DONE, frames[1:], tsp.status_text(frames[0]))
    text = tsp.answer_text(frames)
    if code == tsp.Status.PENDING:
        return Fetched(ReplyState.PENDING, [], text)
    if code == tsp.Status.UNKNOWN:
        if text.startswith(tsp.FAILED_PREFIX):
            return Fetched(ReplyState.FAILED, [], text[len(tsp.FAILED_PREFIX):])
        if text.startswith(tsp.EXPIRED_PREFIX):
            return Fetched(ReplyState.EXPIRED, [], text[len(tsp.EXPIRED_PREFIX):])
        if text.startswith(tsp.CANCELLED_PREFIX):
            return Fetched(ReplyState.CANCELLED, [], text[len(tsp.CANCELLED_PREFIX):])
        return Fetched(ReplyState.UNKNOWN, [], text)
    return Fetched(ReplyState.ERROR, [], text or f"status {code}")


def explain_timeout(service: str | bytes, broker: str, present: bool | None) -> str:
    """Which piece is down after a request to `service` got no reply, given what the broker's
    mmi.service said (`present`; None: the broker did not answer either)."""
    name = (service.encode() if isinstance(service, str) else service).decode(errors="replace")
    if present is None:
        return f"the broker at {broker} does not answer"
    if present:
        return f"the broker answers and {name!r} has workers, but none replied in time"
    return f"the broker answers, but no worker serves {name!r}"


@dataclass(frozen=True)
class CallBudget:
    """How a TSP call spends its time: attempts of `timeout` seconds, then an mmi.service
    question of `probe` seconds to explain a timeout."""

    timeout: float
    retries: int
    probe: float

    @classmethod
    def of(cls, timeout: float, retries: int, within: float | None) -> CallBudget:
        """The client's timeout and retries, cut down so that all fits in `within` seconds."""
        probe = min(DIAGNOSE_TIMEOUT_S, timeout)
        if within is None:
            return cls(timeout, retries, probe)
        probe = min(probe, within / 5)
        budget = max(0.01, within - probe)
        if (retries + 1) * timeout > budget:
            retries = max(0, int(budget / timeout) - 1)
            timeout = budget / (retries + 1)
        return cls(timeout, retries, probe)


@dataclass(frozen=True)
class Unreachable:
    """Why a broker cannot answer: nothing listens at its endpoint, or it refused the
    security handshake (`handshake`)."""

    reason: str
    handshake: bool = False


def unreachable_error(verdicts: Iterable[Unreachable]) -> TitanicError:
    """The error when no broker can answer: HandshakeRefusedError if one refused the security
    handshake, else UnreachableError; each broker's reason told once."""
    found = list(verdicts)
    reasons = "; ".join(dict.fromkeys(verdict.reason for verdict in found))
    if any(verdict.handshake for verdict in found):
        return HandshakeRefusedError(reasons)
    return UnreachableError(reasons)


def worker_gone(refusal: BrokerRefusedError) -> bool:
    """Whether a broker's refusal says that the worker that had the request is gone (so that
    it may be sent again: titanic's TSP calls are idempotent)."""
    return refusal.code == OVER_LIMIT and refusal.reason == WORKER_GONE.decode()
