"""9/TSP: the Titanic Service Protocol's service names, status codes and UUID frames."""

from __future__ import annotations

import enum
import re

from titanic.errors import ProtocolError

REQUEST_SERVICE = b"titanic.request"
REPLY_SERVICE = b"titanic.reply"
CLOSE_SERVICE = b"titanic.close"

_UUID_HEX = re.compile(rb"\A[0-9a-f]{32}\Z")


class Status(enum.IntEnum):
    """TSP status codes; the wire frame is the three digits, optionally a space and text."""

    OK = 200
    PENDING = 300
    UNKNOWN = 400
    ERROR = 500

    def frame(self, text: str = "") -> bytes:
        """The status frame, e.g. b"300 pending"."""
        return f"{self.value} {text}".encode() if text else str(self.value).encode()


def parse_status(frame: bytes) -> int:
    """The three-digit code at the start of a status frame."""
    digits = frame[:3]
    if len(digits) != 3 or not digits.isdigit() or (len(frame) > 3 and frame[3:4] != b" "):
        raise ProtocolError(f"bad TSP status frame {frame[:20]!r}")
    return int(digits)


def status_text(frame: bytes) -> str:
    """The text after the code, if any."""
    return frame[4:].decode("utf-8", "replace")


def parse_uuid(frame: bytes) -> str:
    """A UUID frame (32 hex digits, no dashes; upper case accepted) as lower-case text."""
    lowered = frame.strip().lower()
    if not _UUID_HEX.match(lowered):
        raise ProtocolError(f"not a 32-digit hex UUID: {frame[:40]!r}")
    return lowered.decode("ascii")
