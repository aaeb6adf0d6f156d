"""Freelance (10/FLP), brokerless: titanic's frames between a client and servers it connects to
directly.

The client's ROUTER connects to every server; each server's ROUTER binds and takes as its routing
id the endpoint clients connect to, so the client addresses a server by its endpoint. After the
routing frame (the server's id on the client's side, the client's id on the server's side):

    PING     client -> server   "PING"
    PONG     server -> client   "PONG"
    REQUEST  client -> server   sequence, service, body...
    REPLY    server -> client   sequence, status, body...

`sequence` is the client's number for the request, decimal ASCII digits (at most 20), echoed in
the reply so the client matches replies to requests and drops stale ones. `status` is three
digits: "200" the service's reply (a handler's failure report, titanic.protocol.failure, comes as
a 200 like any reply, as under MDP), "400" a malformed request (the body is the reason), "404" no
such service at this server (the body is the reason). A message that is none of these, or a
request whose sequence cannot be read, is dropped by its receiver and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from titanic.errors import ProtocolError

Frames = list[bytes]

PING = b"PING"
PONG = b"PONG"
OK = b"200"
MALFORMED = b"400"
UNKNOWN_SERVICE = b"404"
#: Every status a server sends.
STATUSES = frozenset({OK, MALFORMED, UNKNOWN_SERVICE})
#: Longest sequence frame, in digits (a 64-bit counter fits).
MAX_SEQUENCE_DIGITS = 20


@dataclass(frozen=True)
class Request:
    """A client's request as a server reads it."""

    sequence: bytes
    service: bytes
    body: Frames


@dataclass(frozen=True)
class Reply:
    """A server's reply as a client reads it."""

    sequence: int
    status: bytes
    body: Frames

    @property
    def ok(self) -> bool:
        """True for the service's own reply (status 200)."""
        return self.status == OK

    @property
    def reason(self) -> str:
        """An error reply's reason, as text."""
        return b" ".join(self.body).decode("utf-8", "replace")


class MalformedRequest(ProtocolError):
    """A request whose sequence is readable but whose rest is not: answered with 400."""

    def __init__(self, sequence: bytes, reason: str) -> None:
        self.sequence = sequence
        self.reason = reason
        super().__init__(reason)


def _is_sequence(frame: bytes) -> bool:
    return 0 < len(frame) <= MAX_SEQUENCE_DIGITS and frame.isdigit()


def build_request(sequence: int, service: bytes, body: Sequence[bytes]) -> Frames:
    """A REQUEST's frames (without the server's routing frame)."""
    if sequence < 0:
        raise ValueError("a sequence is not negative")
    return [b"%d" % sequence, service, *body]


def build_reply(sequence: bytes, status: bytes, body: Sequence[bytes]) -> Frames:
    """A REPLY's frames (without the client's routing frame)."""
    return [sequence, status, *body]


def build_error(sequence: bytes, status: bytes, reason: str) -> Frames:
    """An error REPLY: the status and the reason in one UTF-8 frame."""
    return [sequence, status, reason.encode("utf-8")]


def is_ping(frames: Sequence[bytes]) -> bool:
    """True for a PING."""
    return len(frames) == 1 and frames[0] == PING


def is_pong(frames: Sequence[bytes]) -> bool:
    """True for a PONG."""
    return len(frames) == 1 and frames[0] == PONG


def parse_request(frames: Sequence[bytes]) -> Request:
    """A REQUEST; ProtocolError if it has no readable sequence (dropped), MalformedRequest if
    the sequence reads but the service is missing or empty (answered 400)."""
    if not frames or not _is_sequence(frames[0]):
        raise ProtocolError("not a freelance request: no sequence frame")
    if len(frames) < 2 or not frames[1]:
        raise MalformedRequest(frames[0], "a request names a service in its second frame")
    return Request(frames[0], frames[1], list(frames[2:]))


def parse_reply(frames: Sequence[bytes]) -> Reply:
    """A REPLY; ProtocolError for anything else."""
    if len(frames) < 2 or not _is_sequence(frames[0]):
        raise ProtocolError("not a freelance reply: no sequence frame")
    if frames[1] not in STATUSES:
        raise ProtocolError(f"not a freelance reply: status {frames[1][:8]!r}")
    return Reply(int(frames[0]), frames[1], list(frames[2:]))
