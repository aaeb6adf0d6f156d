"""The failure-report convention and the UUID forms, without sockets."""

from __future__ import annotations

import pytest

from titanic.client.tsp import uuid_frame
from titanic.errors import InvalidRequestError, ProtocolError
from titanic.protocol.failure import (
    CUT_MARK,
    MARKER,
    MAX_ERROR_BYTES,
    MAX_TRACEBACK_BYTES,
    FailureKind,
    FailureReport,
    build_failure,
    describe_exception,
    format_traceback,
    parse_failure,
    split_last_error,
)
from titanic.protocol.tsp import parse_uuid
from titanic.store import check_request_id
from titanic.store.types import failed_after
from titanic.worker.mdp import as_frames


def test_failure_report_round_trips() -> None:
    frames = build_failure(FailureKind.PERMANENT, "ValueError: bad input")
    assert frames == [MARKER, b"permanent", b"ValueError: bad input"]
    report = parse_failure(frames)
    assert report is not None and report.permanent and report.error == "ValueError: bad input"


@pytest.mark.parametrize("reply", [
    [], [b"hello"], [MARKER], [MARKER, b"retry"], [MARKER, b"retry", b"x", b"tb", b""],
    [MARKER, b"RETRY", b"x"], [b"titanic.failure ", b"retry", b"x"],
])
def test_ordinary_replies_are_not_failures(reply: list[bytes]) -> None:
    assert parse_failure(reply) is None


def test_a_fourth_frame_carries_the_traceback_and_three_frames_still_parse() -> None:
    frames = build_failure(FailureKind.RETRY, "ValueError: bad input", "Traceback ...\n  x\n")
    assert frames == [MARKER, b"retry", b"ValueError: bad input", b"Traceback ...\n  x\n"]
    report = parse_failure(frames)
    assert report == FailureReport(FailureKind.RETRY, "ValueError: bad input", "Traceback ...\n  x")
    assert report.last_error == "ValueError: bad input\nTraceback ...\n  x"
    old = parse_failure([MARKER, b"permanent", b"KeyError"])
    assert old == FailureReport(FailureKind.PERMANENT, "KeyError", "")
    assert old.last_error == "KeyError"
    assert parse_failure([MARKER, b"retry", b"x", b""]) == FailureReport(FailureKind.RETRY, "x")


def test_the_error_of_a_report_is_one_line_whoever_sent_it() -> None:
    report = parse_failure([MARKER, b"retry", b"Foreign: two\nlines", b"tb"])
    assert report is not None and report.error == "Foreign: two lines"
    assert build_failure(FailureKind.RETRY, "a\nb")[2] == b"a b"


def test_a_long_traceback_keeps_its_end_on_a_line_boundary() -> None:
    lines = [f"  line {n}: " + "é" * 30 for n in range(600)]
    frames = build_failure(FailureKind.RETRY, "E: x", "\n".join(lines))
    assert len(frames[3]) <= MAX_TRACEBACK_BYTES
    text = frames[3].decode("utf-8")
    assert text.startswith(CUT_MARK)
    kept = text[len(CUT_MARK):].split("\n")
    assert kept[-1] == lines[-1] and kept[0] in lines  # whole lines, the last ones
    assert "line 0:" not in text


def test_format_traceback_names_the_raising_line_and_the_cause() -> None:
    def inner() -> None:
        raise KeyError("missing")

    try:
        try:
            inner()
        except KeyError as exc:
            raise ValueError("bad input") from exc
    except ValueError as exc:
        raised = exc
    text = format_traceback(raised)
    assert text.startswith("Traceback (most recent call last):")
    assert 'raise KeyError("missing")' in text and "in inner" in text
    assert text.endswith("ValueError: bad input")
    assert "direct cause" in text
    assert "in test_format_traceback" in text
    # The calls of the modules skipped are left out of the exception's own traceback (a
    # cause's spans only the calls between its raise and its catch: kept whole).
    cause, reported = format_traceback(raised, skip={__name__}).split("direct cause")
    assert "in inner" in cause
    assert "File" not in reported and reported.endswith("ValueError: bad input")


def test_last_error_keeps_the_error_and_the_attempts_on_its_first_line() -> None:
    text = failed_after("ValueError: bad\nTraceback (most recent call last):\n  x", 3)
    assert split_last_error(text) == ("ValueError: bad (after 3 attempts)",
                                      "Traceback (most recent call last):\n  x")
    assert split_last_error(failed_after("no reply", 5)) == ("no reply (after 5 attempts)", "")


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
