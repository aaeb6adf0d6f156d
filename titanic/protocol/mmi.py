"""8/MMI: the broker's own services, named mmi.*.

Beside 8/MMI's `mmi.service`, titanic's broker answers `mmi.broker` (an extension in MMI's
namespace): "200" and one frame holding a JSON object of the broker's facts: its version,
uptime and, per service, live workers and requests waiting for one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

PREFIX = b"mmi."
SERVICE = b"mmi.service"
BROKER = b"mmi.broker"
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


def facts_reply(facts: dict[str, Any]) -> list[bytes]:
    """The mmi.broker answer: "200" and the facts as JSON."""
    return [FOUND, json.dumps(facts, separators=(",", ":")).encode()]


def parse_facts(reply: Sequence[bytes]) -> dict[str, Any] | None:
    """The facts from an mmi.broker answer; None if the broker does not answer it (a
    broker other than titanic's says "501")."""
    if len(reply) != 2 or reply[0] != FOUND:
        return None
    try:
        facts = json.loads(reply[1])
    except ValueError:
        return None
    return facts if isinstance(facts, dict) else None
