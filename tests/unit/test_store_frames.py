"""The frame packing: every boundary survives; garbage is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from titanic.errors import InvalidRequestError
from titanic.store.frames import decode_frames, encode_frames
from titanic.store.types import backoff_delay, check_request_id, new_request_id


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_encode_then_decode_returns_the_frames(frames: list[bytes]) -> None:
    assert decode_frames(encode_frames(frames)) == tuple(frames)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_value_error(blob: bytes) -> None:
    try:
        frames = decode_frames(blob)
    except ValueError:
        return
    assert encode_frames(frames) == blob


def test_truncation_is_detected() -> None:
    packed = encode_frames([b"abc", b""])
    for cut in range(len(packed)):
        with pytest.raises(ValueError, match=r"^frame packing (shorter|truncated)"):
            decode_frames(packed[:cut])


def test_request_ids_are_uuid7_and_sort_by_time() -> None:
    ids = [new_request_id() for _ in range(50)]
    assert all(len(i) == 32 and i[12] == "7" for i in ids)
    assert len(set(ids)) == 50
    assert check_request_id(ids[0].upper()) == ids[0]
    with pytest.raises(InvalidRequestError):
        check_request_id("not-a-uuid")


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(n, 1.0, 5.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
