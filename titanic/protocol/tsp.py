"""9/TSP: the Titanic Service Protocol's service names, status codes and UUID frames."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from titanic.errors import ProtocolError

REQUEST_SERVICE = b"titanic.request"
REPLY_SERVICE = b"titanic.reply"
CLOSE_SERVICE = b"titanic.close"
#: titanic's extension: every dispatcher answers `200`, its store's identity and location.
STORE_SERVICE = b"titanic.store"
#: titanic's extension (named in titanic.store's list, not a service): titanic.request takes
#: options (a time to wait for, a priority) in the options form, see `build_request`.
OPTIONS_EXTENSION = b"titanic.request.options"
#: titanic's extension: `titanic.cancel` [uuid] cancels a request (the submitter's, or any
#: for an admin key): `200, <the state it was in>` (a finished one stays as it was), or `400,
#: unknown`. `titanic.cancelled` [uuid], asked by a worker running it: `200, yes` or `200, no`.
CANCEL_SERVICE = b"titanic.cancel"
CANCELLED_SERVICE = b"titanic.cancelled"
#: The first frame of a task call or result (titanic.tasks.codec); a dispatcher forwarding a
#: task call adds its request's UUID as a third frame, for `titanic.current()` on the worker.
TASK_FRAME = b"titanic.task/1"
#: titanic's extension: titanic.reply held until the request is no longer pending, or a time
#: in milliseconds given after the UUID has passed (titanic.dispatch.held_waits).
WAIT_SERVICE = b"titanic.wait"
#: titanic's extension: titanic.wait's follow form, `uuid, milliseconds, after`, answered with the
#: parts of a streamed reply numbered after `after` (follow_answer, parse_follow_answer).
FOLLOW_FORM = b"titanic.follow"
#: titanic's extension: the batch form of titanic.request, many requests in one message and
#: one transaction (build_batch, split_batch); named in titanic.store's extensions list.
BATCH_FORM = b"titanic.batch"

#: Texts after a status code that titanic's server writes and its client reads: how a request
#: ended when titanic.reply answers 400 (the digits alone are all the protocol requires).
PENDING_TEXT = "pending"
UNKNOWN_TEXT = "unknown"
FAILED_PREFIX = "failed: "
EXPIRED_PREFIX = "expired: "
CANCELLED_PREFIX = "cancelled: "

#: 32 hex digits, or the canonical 8-4-4-4-12 form with hyphens; either case.
_UUID_TEXT = re.compile(r"\A(?:[0-9a-f]{32}|[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12})\Z")


class Status(enum.IntEnum):
    """TSP status codes; the wire frame is the three digits, optionally a space and text."""

    OK = 200
    PENDING = 300
    UNKNOWN = 400
    ERROR = 500
    #: A limit was reached (the broker's queues, a key's stored requests): retry later.
    OVER_LIMIT = 503

    def frame(self, text: str = "") -> bytes:
        """A status frame with its text, e.g. b"300 pending" (titanic.manage answers so)."""
        return f"{self.value} {text}".encode() if text else str(self.value).encode()

    def answer(self, text: str = "") -> list[bytes]:
        """A TSP answer without a body: the three digits alone in the status frame, then the
        text in a frame of its own, so that a client comparing whole status frames (the
        guide's ticlient compares with b"400") understands it."""
        code = str(self.value).encode()
        return [code, text.encode()] if text else [code]


def answer_text(frames: Sequence[bytes]) -> str:
    """The text of a TSP answer that is not a 200: after the digits in the status frame, or
    the frame after it (see Status.answer)."""
    if not frames:
        return ""
    text = status_text(frames[0])
    if not text and len(frames) > 1:
        text = frames[1].decode("utf-8", "replace")
    return text


def parse_status(frame: bytes) -> int:
    """The three-digit code at the start of a status frame."""
    digits = frame[:3]
    if len(digits) != 3 or not digits.isdigit() or (len(frame) > 3 and frame[3:4] != b" "):
        raise ProtocolError(f"bad TSP status frame {frame[:20]!r}")
    return int(digits)


def status_text(frame: bytes) -> str:
    """The text after the code, if any."""
    return frame[4:].decode("utf-8", "replace")


def canonical_uuid(text: str) -> str | None:
    """A UUID as TSP writes it (32 lower-case hex digits), from that form or the hyphenated one,
    in either case; None if `text` is neither."""
    lowered = text.strip().lower()
    if not _UUID_TEXT.match(lowered):
        return None
    return lowered.replace("-", "")


def parse_uuid(frame: bytes) -> str:
    """A UUID frame (32 hex digits, or hyphenated 8-4-4-4-12; any case) as 32 lower-case digits."""
    text = frame.decode("utf-8", "backslashreplace")
    found = canonical_uuid(text)
    if found is None:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ProtocolError(f"not a UUID (32 hex digits, or 8-4-4-4-12): '{shown}'")
    return found


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What a titanic.request may ask for beyond 9/TSP: not to be sent before a time
    (milliseconds since the Unix epoch, UTC) and a priority within its service (higher first).
    On the wire one frame of `name=value` words separated by spaces, e.g. b"not_before=
    1798135200000 priority=5"; a server refuses (400) a name or value it does not know, so
    that nothing asked for is silently ignored."""

    not_before_ms: int | None = None
    priority: int = 0

    def __bool__(self) -> bool:
        """Whether anything is asked for (else the request goes in a plain form)."""
        return self.not_before_ms is not None or self.priority != 0

    def frame(self) -> bytes:
        """The options frame."""
        words = []
        if self.not_before_ms is not None:
            words.append(f"not_before={self.not_before_ms:d}")
        if self.priority:
            words.append(f"priority={self.priority:d}")
        return " ".join(words).encode("ascii")

    @classmethod
    def parse(cls, frame: bytes) -> RequestOptions:
        """An options frame; ProtocolError for a word it does not know."""
        values: dict[str, int] = {}
        for word in frame.split():
            name, equals, value = word.partition(b"=")
            text = name.decode("ascii", "replace")
            if not equals or text not in ("not_before", "priority") or text in values:
                raise ProtocolError(f"unknown or repeated titanic.request option {word[:40]!r}")
            if not value.lstrip(b"-").isdigit() or len(value) > 20:
                raise ProtocolError(f"the titanic.request option {text} is not an integer")
            values[text] = int(value)
        if values.get("not_before", 0) < 0:
            raise ProtocolError("the titanic.request option not_before is negative")
        return cls(values.get("not_before"), values.get("priority", 0))


def build_request(service: bytes, frames: Sequence[bytes], key: str | None = None,
                  options: RequestOptions | None = None) -> list[bytes]:
    """A titanic.request body: [service, frames...], with an idempotency key the keyed form
    ["", key, service, frames...], and with options the options form ["", "", "", options, key
    or "", service, frames...] (only for a server naming OPTIONS_EXTENSION; see
    docs/concepts.md). TypeError for a service that is not bytes or a key that is not a str."""
    if not isinstance(service, bytes):
        raise TypeError(f"the service is {type(service).__name__}: a service name is str or "
                        "bytes")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"the key is {type(key).__name__}: an idempotency key is a str")
    if options:
        return [b"", b"", b"", options.frame(), b"" if key is None else key.encode("utf-8"),
                service, *frames]
    if key is None:
        return [service, *frames]
    return [b"", key.encode("utf-8"), service, *frames]


def split_request(body: Sequence[bytes]) -> tuple[str | None, list[bytes]]:
    """A titanic.request body as (idempotency key or None, [service, frames...]), its options
    (if any) left out: see split_request_options."""
    key, _, rest = split_request_options(body)
    return key, rest


def split_request_options(body: Sequence[bytes]
                          ) -> tuple[str | None, RequestOptions, list[bytes]]:
    """A titanic.request body as (idempotency key or None, options, [service, frames...]).

    Plain 9/TSP never sends an empty first frame (it would name no service), so an empty first
    frame marks the keyed form, two empty frames the batch form (see split_batch) and three
    the options form; ProtocolError if a key frame is missing, empty (keyed form) or not UTF-8,
    or the options are missing or unknown.
    """
    if not body or body[0]:
        return None, RequestOptions(), list(body)
    if is_options_form(body):
        if len(body) < 6:
            raise ProtocolError("a titanic.request with options needs an options frame, a key "
                                "frame (empty for none) and a service after its three empty "
                                "frames")
        options = RequestOptions.parse(body[3])
        return (_key(body[4]) if body[4] else None), options, list(body[5:])
    if len(body) < 2 or not body[1]:
        raise ProtocolError("a keyed titanic.request needs a non-empty key frame after the "
                            "empty frame")
    return _key(body[1]), RequestOptions(), list(body[2:])


def _key(frame: bytes) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("the idempotency key is not UTF-8") from exc


def task_call_with_id(frames: Sequence[bytes], request_id: str) -> Sequence[bytes]:
    """A forwarded request's frames: a task call (TASK_FRAME and its arguments) with its
    request's UUID as a third frame, anything else as it is."""
    if len(frames) == 2 and frames[0] == TASK_FRAME:
        return (*frames, request_id.encode("ascii"))
    return frames


class BatchItem(NamedTuple):
    """One request of a batch: its frames and its idempotency key (None: no key)."""

    frames: tuple[bytes, ...]
    key: str | None = None


def build_batch(service: bytes, items: Sequence[BatchItem]) -> list[bytes]:
    """A titanic.request body in the batch form: ["", "", service, then for each request a head
    frame (its frame count in decimal, then a space and its key when it has one) and its
    frames]. Two empty frames never start a plain or keyed request, so a server without the
    form refuses it with 400 rather than storing it wrongly."""
    body = [b"", b"", service]
    for item in items:
        head = b"%d" % len(item.frames)
        if item.key is not None:
            head += b" " + item.key.encode("utf-8")
        body.append(head)
        body.extend(item.frames)
    return body


def is_batch(body: Sequence[bytes]) -> bool:
    """Whether a titanic.request body is in the batch form (two empty frames first, then a
    service name)."""
    return len(body) >= 2 and not body[0] and not body[1] and not is_options_form(body)


def is_options_form(body: Sequence[bytes]) -> bool:
    """Whether a titanic.request body is in the options form (three empty frames first)."""
    return len(body) >= 3 and not body[0] and not body[1] and not body[2]


def split_batch(body: Sequence[bytes]) -> tuple[bytes, list[BatchItem]]:
    """A batch-form body (is_batch) as (service, its requests in order); ProtocolError for a
    missing service, a head frame that is not a count (and key), a count past the end of the
    message, a key that is empty or not UTF-8, or no request at all."""
    if len(body) < 3 or not body[2]:
        raise ProtocolError("a batch needs a service name frame after its two empty frames")
    items: list[BatchItem] = []
    at = 3
    while at < len(body):
        count_text, space, key_bytes = body[at].partition(b" ")
        if not count_text.isdigit() or len(count_text) > 9 or (space and not key_bytes):
            raise ProtocolError(f"batch request {len(items) + 1}: bad head frame "
                                f"{body[at][:30]!r} (a frame count, then a space and a key)")
        count = int(count_text)
        if at + 1 + count > len(body):
            raise ProtocolError(f"batch request {len(items) + 1}: {count} frames announced, "
                                f"{len(body) - at - 1} left in the message")
        try:
            key = key_bytes.decode("utf-8") if space else None
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"batch request {len(items) + 1}: the idempotency key is not "
                                "UTF-8") from exc
        items.append(BatchItem(tuple(body[at + 1:at + 1 + count]), key))
        at += 1 + count
    if not items:
        raise ProtocolError("a batch needs at least one request")
    return body[2], items


class FollowPage(NamedTuple):
    """A follow answer: whether the request is done (no part after these), and its parts
    numbered after the one asked about, each (number, frames)."""

    done: bool
    parts: list[tuple[int, tuple[bytes, ...]]]


def follow_answer(done: bool, parts: Sequence[tuple[int, Sequence[bytes]]]) -> list[bytes]:
    """titanic.wait's follow answer: `200`, `done` or `pending`, then for each part a head frame
    (its number, a space, its frame count) and its frames."""
    answer = [str(Status.OK.value).encode(), b"done" if done else b"pending"]
    for seq, frames in parts:
        answer.append(b"%d %d" % (seq, len(frames)))
        answer.extend(frames)
    return answer


def parse_follow_answer(frames: Sequence[bytes]) -> FollowPage:
    """A follow answer whose status is 200 as a FollowPage; ProtocolError if it is malformed."""
    if len(frames) < 2 or frames[1] not in (b"done", b"pending"):
        raise ProtocolError("titanic.wait's follow answer names no state")
    parts: list[tuple[int, tuple[bytes, ...]]] = []
    at = 2
    while at < len(frames):
        seq_text, _, count_text = frames[at].partition(b" ")
        if not seq_text.isdigit() or not count_text.isdigit() or len(count_text) > 9:
            raise ProtocolError(f"bad part head {frames[at][:30]!r} in a follow answer")
        count = int(count_text)
        if at + 1 + count > len(frames):
            raise ProtocolError("a follow answer's part runs past its end")
        parts.append((int(seq_text), tuple(frames[at + 1:at + 1 + count])))
        at += 1 + count
    return FollowPage(frames[1] == b"done", parts)


class ServingStore(NamedTuple):
    """A store as `titanic.store` names it: its identity, its location, the largest request
    body it stores in bytes, and the extension services its server answers (None and empty
    from a server that does not say)."""

    id: str
    location: str
    max_request_bytes: int | None = None
    extensions: frozenset[bytes] = frozenset()


def store_answer(store: ServingStore) -> list[bytes]:
    """titanic.store's answer: `200`, the store's identity, its location, the largest request
    body it stores (decimal bytes), the extension services its server answers (names separated
    by spaces)."""
    return [str(Status.OK.value).encode(), store.id.encode(), store.location.encode(),
            b"%d" % (store.max_request_bytes or 0), b" ".join(sorted(store.extensions))]


def parse_store_answer(frames: Sequence[bytes]) -> ServingStore:
    """The store a `titanic.store` answer names; ProtocolError if it names none."""
    if len(frames) < 3 or parse_status(frames[0]) != Status.OK:
        raise ProtocolError(f"titanic.store answered {frames[:1]!r}")
    limit = int(frames[3]) if len(frames) > 3 and frames[3].isdigit() else None
    extensions = frozenset(frames[4].split()) if len(frames) > 4 else frozenset()
    return ServingStore(frames[1].decode("ascii", "replace"), frames[2].decode("utf-8", "replace"),
                        limit or None, extensions)
