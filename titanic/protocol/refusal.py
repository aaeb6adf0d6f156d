"""A broker's refusal: how titanic's broker answers a request it will not route, and how a
client tells that answer from a worker's reply.

A refusal is a reply of two frames: a status, three digits alone (`400` a malformed request,
`413` a request over a size limit, `503` a full queue: retry later), and the reason in words.
A plain MDP client receives it under its request's service name, like any reply: the status
frame is how it can recognise one. A titanic client marks its connections (its ZeroMQ routing
id starts with `MARK`), and the broker then answers its refusals with an empty service frame,
which no worker's reply can carry (a worker registers under a non-empty service name): titanic's
clients and dispatchers never take a refusal for a reply.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from titanic.errors import ProtocolError
from titanic.protocol.mdp import Frames

#: The start of the routing id of a client that wants its refusals marked.
MARK = b"tc1/"
#: The refusals' status codes.
BAD_REQUEST = 400
TOO_LARGE = 413
OVER_LIMIT = 503


class Refusal(NamedTuple):
    """A refusal's status code and reason."""

    code: int
    reason: str

    def __str__(self) -> str:
        return f"{self.code} {self.reason}"


#: The reason of the 503 a marked client gets when the worker that had its request is gone:
#: the request may never have been served, and may be sent again (titanic's TSP calls are).
WORKER_GONE = b"the worker that had this request is gone: send it again"


def marked_routing_id() -> bytes:
    """A fresh routing id for a client socket that wants its refusals marked."""
    return MARK + os.urandom(12)


def refusal_body(code: int, reason: bytes) -> Frames:
    """A refusal's frames: the status digits alone, then the reason."""
    return [b"%d" % code, reason]


def parse_refusal(body: Frames) -> Refusal:
    """A refusal's code and reason; ProtocolError if the body is not one."""
    if not body or len(body[0]) != 3 or not body[0].isdigit():
        raise ProtocolError(f"not a broker refusal: {body[:1]!r}")
    reason = b" ".join(body[1:]).decode("utf-8", "replace")
    return Refusal(int(body[0]), reason)
