"""The management service `titanic.manage`: an extension beside 9/TSP, carried over MDP.

request: command frame, then optionally one frame holding a JSON object of arguments
reply:   status frame (three digits, as TSP), then one frame holding a JSON object

    info     {"window_s": 60}                      -> the store's view per service, the dispatcher
    describe {}                                    -> {"dispatcher": which one answers}
    failed   {"state": "failed", "service": S, "limit": N}    -> {"requests": [...]}
    retry    {"state": "failed", "service": S, "dry_run": b}  -> {"count": n, "dry_run": b}
    retry    {"uuid": U}                                      -> {"count": 0 or 1}
    purge    {"state": "done", "older_than_s": T, "service": S, "dry_run": b} -> {"count": n}

200 answers the command; 400 (text: why) refuses a malformed one; 500 is a store error.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from titanic.errors import ProtocolError
from titanic.protocol.tsp import Status, parse_status, status_text

SERVICE = b"titanic.manage"

#: Largest arguments frame taken, in bytes: commands are small.
MAX_ARGUMENTS_BYTES = 64 * 1024


class Command(enum.StrEnum):
    """What a management request asks for."""

    INFO = "info"
    DESCRIBE = "describe"
    FAILED = "failed"
    RETRY = "retry"
    PURGE = "purge"


def build_request(command: Command, arguments: dict[str, Any] | None = None) -> list[bytes]:
    """The body of a titanic.manage request."""
    return [command.value.encode(), json.dumps(arguments or {}).encode()]


def parse_request(body: list[bytes]) -> tuple[Command, dict[str, Any]]:
    """A request body as its command and arguments; ProtocolError if it is not one."""
    if not body or len(body) > 2:
        raise ProtocolError("a management request is a command frame and an arguments frame")
    try:
        command = Command(body[0].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        known = ", ".join(c.value for c in Command)
        raise ProtocolError(f"unknown command {body[0][:40]!r} (known: {known})") from None
    arguments = _json_object(body[1], "arguments") if len(body) == 2 and body[1] else {}
    return command, arguments


def build_reply(payload: dict[str, Any]) -> list[bytes]:
    """A 200 reply carrying `payload`."""
    return [Status.OK.frame(), json.dumps(payload, separators=(",", ":")).encode()]


def build_refusal(status: Status, why: str) -> list[bytes]:
    """A 400 or 500 reply saying why."""
    return [status.frame(why), b"{}"]


def parse_reply(frames: list[bytes]) -> tuple[int, str, dict[str, Any]]:
    """A reply as (status code, status text, payload); ProtocolError if it is malformed."""
    if not frames:
        raise ProtocolError("titanic.manage answered with no status frame")
    code = parse_status(frames[0])
    payload = _json_object(frames[1], "reply") if len(frames) > 1 else {}
    return code, status_text(frames[0]), payload


def _json_object(frame: bytes, what: str) -> dict[str, Any]:
    if len(frame) > MAX_ARGUMENTS_BYTES and what == "arguments":
        raise ProtocolError(f"arguments of {len(frame)} bytes: at most {MAX_ARGUMENTS_BYTES}")
    try:
        value = json.loads(frame)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the {what} frame is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"the {what} frame is not a JSON object")
    return value
