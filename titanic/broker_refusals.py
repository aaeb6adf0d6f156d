"""What the broker answers when it refuses a request: one status frame, as TSP and MMI reply.

A refused request is answered at once, in the dialect its client spoke, with "413 ..." when the
request is over a size limit and "503 ..." when the client has too many requests queued or the
service's queue (or all queues together) is full: the client may retry a 503 later, never a 413
unchanged. Each builder returns the reply's frames without the client's identity.
"""

from __future__ import annotations

from titanic.protocol.mdp import Dialect, Frames, build_client_reply
from titanic.settings import MAX_SERVICE_NAME_BYTES

#: Status replies to requests refused by a per-client limit (three digits, as TSP and MMI use).
OVERSIZED = b"413"
OVER_CLIENT_LIMIT = b"503"
QUEUE_FULL = b"503"


def oversized(dialect: Dialect, service_name: bytes, size: int, limit: int) -> Frames:
    """413 for a request (service name and body) of `size` bytes over the broker's limit."""
    return build_client_reply(dialect, service_name, [
        OVERSIZED + b" request of %d bytes exceeds the broker's limit of %d bytes"
        % (size, limit)])


def long_name(dialect: Dialect, service_name: bytes) -> Frames:
    """413 for a service name over MAX_SERVICE_NAME_BYTES. It names no service (an empty
    service frame): echoing the name would make the broker hold it again."""
    return build_client_reply(dialect, b"", [
        OVERSIZED + b" service name of %d bytes exceeds the limit of %d bytes"
        % (len(service_name), MAX_SERVICE_NAME_BYTES)])


def over_client_limit(dialect: Dialect, service_name: bytes, by_key: bool, limit: int) -> Frames:
    """503 for a client (a CURVE key, or one connection without CURVE) with `limit` requests
    queued already."""
    return build_client_reply(dialect, service_name, [
        OVER_CLIENT_LIMIT + b" too many queued requests from this %s (limit %d): retry later"
        % (b"key" if by_key else b"client", limit)])


def queue_full(dialect: Dialect, service_name: bytes, why: bytes) -> Frames:
    """503 for want of queue room; `why` says which queue."""
    return build_client_reply(dialect, service_name, [QUEUE_FULL + b" " + why + b": retry later"])
