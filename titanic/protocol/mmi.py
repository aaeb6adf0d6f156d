"""8/MMI: the broker's own services, named mmi.*."""

from __future__ import annotations

from collections.abc import Callable, Sequence

PREFIX = b"mmi."
SERVICE = b"mmi.service"
FOUND = b"200"
NOT_FOUND = b"404"
NOT_IMPLEMENTED = b"501"


def is_mmi(service: bytes) -> bool:
    """True for names the broker answers itself."""
    return service.startswith(PREFIX)


def answer(service: bytes, body: Sequence[bytes], has_workers: Callable[[bytes], bool]) -> bytes:
    """The status code for an mmi.* request; `has_workers` tells whether a service has live ones."""
    if service != SERVICE:
        return NOT_IMPLEMENTED
    name = body[0] if body else b""
    return FOUND if name and has_workers(name) else NOT_FOUND
