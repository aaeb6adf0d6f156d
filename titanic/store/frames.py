"""Frames as one byte string: a frame count, then each frame's length and bytes (big-endian u32).

Every boundary survives, empty frames and zero frames included; nothing is pickled.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_U32 = struct.Struct(">I")


def encode_frames(frames: Sequence[bytes]) -> bytes:
    """Pack frames into one byte string."""
    parts = [_U32.pack(len(frames))]
    for frame in frames:
        parts.append(_U32.pack(len(frame)))
        parts.append(bytes(frame))
    return b"".join(parts)


def decode_frames(blob: bytes) -> tuple[bytes, ...]:
    """Unpack what encode_frames packed; ValueError if the bytes are not such a packing."""
    view = memoryview(blob)
    if len(view) < 4:
        raise ValueError("frame packing shorter than its header")
    (count,) = _U32.unpack_from(view, 0)
    offset = 4
    frames = []
    for _ in range(count):
        if offset + 4 > len(view):
            raise ValueError("frame packing truncated in a length")
        (length,) = _U32.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise ValueError("frame packing truncated in a frame")
        frames.append(bytes(view[offset:offset + length]))
        offset += length
    if offset != len(view):
        raise ValueError("frame packing has trailing bytes")
    return tuple(frames)
