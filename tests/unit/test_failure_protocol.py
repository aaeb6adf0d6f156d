"""The failure-report convention and the UUID forms, without sockets."""

from __future__ import annotations

import pytest

from titanic.errors import InvalidRequestError, ProtocolError
from titanic.protocol.failure import (
    MARKER,
    MAX_ERROR_BYTES,
    FailureKind,
    build_failure,
    describe_exception,
    parse_failure,
)
from titanic.protocol.tsp import parse_uuid
from titanic.store import check_request_id
from titanic.tsp_client import uuid_frame
from titanic.worker import as_frames


def test_failure_report_round_trips() -> None:
    frames = build_failure(FailureKind.PERMANENT, "ValueError: bad input")
    assert frames == [MARKER, b"permanent", b"ValueError: bad input"]
    report = parse_failure(frames)
    assert report is not None and report.permanent and report.error == "ValueError: bad input"


@pytest.mark.parametrize("reply", [
    [], [b"hello"], [MARKER], [MARKER, b"retry"], [MARKER, b"retry", b"x", b""],
    [MARKER, b"RETRY", b"x"], [b"titanic.failure ", b"retry", b"x"],
])
def test_ordinary_replies_are_not_failures(reply: list[bytes]) -> None:
    assert parse_failure(reply) is None


def test_long_error_text_is_cut_on_a_character_boundary() -> None:
    frames = build_failure(FailureKind.RETRY, "é" * MAX_ERROR_BYTES)
    assert len(frames[2]) <= MAX_ERROR_BYTES
    assert frames[2].decode("utf-8") == "é" * (MAX_ERROR_BYTES // 2)


def test_exception_description_is_type_and_message_on_one_line() -> None:
    assert describe_exception(ValueError("bad\ninput")) == "ValueError: bad input"
    assert describe_exception(KeyError()) == "KeyError"


def test_handler_answers_become_frames() -> None:
    assert as_frames("ü") == ["ü".encode()]
    assert as_frames(b"x") == [b"x"]
    assert as_frames(None) == []
    assert as_frames(("a", b"b", bytearray(b"c"))) == [b"a", b"b", b"c"]
    with pytest.raises(TypeError):
        as_frames(3)


HEX = "0190c6f2a1b47c3e9d2f00112233aabb"
HYPHENATED = "0190C6F2-A1B4-7C3E-9D2F-00112233AABB"


@pytest.mark.parametrize("text", [HEX, HEX.upper(), HYPHENATED, HYPHENATED.lower()])
def test_uuids_are_taken_in_both_forms_and_cases(text: str) -> None:
    assert parse_uuid(text.encode()) == HEX
    assert check_request_id(text) == HEX
    assert uuid_frame(text) == HEX.encode()


@pytest.mark.parametrize("text", [HEX[:-1], HEX + "0", "0190c6f2a1b4-7c3e-9d2f-00112233aabb",
                                  "{" + HYPHENATED + "}", "-" * 36])
def test_other_uuid_shapes_are_refused(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_uuid(text.encode())
    with pytest.raises(InvalidRequestError):
        check_request_id(text)
