"""What the broker answers when it refuses a request: a status frame and a reason.

A refused request is answered at once, in the dialect its client spoke: "400" when it names no
service, "413" when it is over a size limit and "503" when the client has too many bytes queued
or the service's queue (or all queues together) is full. The client may retry a 503 later, never
a 400 or 413 unchanged. Each builder returns the refusal's body (titanic.protocol.refusal); the
core puts it under the request's service name, or under an empty one for a client that marked
its connection, so that titanic's clients never take it for a worker's reply.
"""

from __future__ import annotations

from titanic.protocol.mdp import Frames
from titanic.protocol.refusal import (
    BAD_REQUEST,
    OVER_LIMIT,
    TOO_LARGE,
    WORKER_GONE,
    refusal_body,
)
from titanic.settings import MAX_SERVICE_NAME_BYTES


def no_service() -> Frames:
    """400 for a request whose service frame is empty."""
    return refusal_body(BAD_REQUEST, b"the request names no service")


def oversized(size: int, limit: int) -> Frames:
    """413 for a request (service name and body) of `size` bytes over the broker's limit."""
    return refusal_body(TOO_LARGE, b"request of %d bytes exceeds the broker's limit of %d bytes"
                        % (size, limit))


def long_name(service_name: bytes) -> Frames:
    """413 for a service name over MAX_SERVICE_NAME_BYTES."""
    return refusal_body(TOO_LARGE, b"service name of %d bytes exceeds the limit of %d bytes"
                        % (len(service_name), MAX_SERVICE_NAME_BYTES))


def over_client_limit(by_key: bool, limit: int) -> Frames:
    """503 for a client (a CURVE key, or one connection without CURVE) with `limit` bytes of
    requests queued already."""
    return refusal_body(OVER_LIMIT, b"this %s has %d bytes of requests queued, its limit: "
                        b"retry later" % (b"key" if by_key else b"client", limit))


def queue_full(why: bytes) -> Frames:
    """503 for want of queue room; `why` says which queue."""
    return refusal_body(OVER_LIMIT, why + b": retry later")


def worker_gone() -> Frames:
    """503 for a request whose worker was removed with it in hand (sent to marked clients and
    the host only: a plain client cannot tell it from a reply)."""
    return refusal_body(OVER_LIMIT, WORKER_GONE)
