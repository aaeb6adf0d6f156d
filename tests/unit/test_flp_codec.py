"""The Freelance (10/FLP) frames: what a client and a server build, and what they refuse."""

from __future__ import annotations

import pytest

from titanic.errors import ProtocolError
from titanic.protocol import flp


def test_request_round_trip_keeps_sequence_service_and_body() -> None:
    frames = flp.build_request(42, b"echo", [b"a", b"", b"c"])
    assert frames == [b"42", b"echo", b"a", b"", b"c"]
    request = flp.parse_request(frames)
    assert (request.sequence, request.service, request.body) == (b"42", b"echo", [b"a", b"", b"c"])


def test_reply_round_trip_and_error_reply() -> None:
    reply = flp.parse_reply(flp.build_reply(b"7", flp.OK, [b"x", b"y"]))
    assert (reply.sequence, reply.ok, reply.body) == (7, True, [b"x", b"y"])
    error = flp.parse_reply(flp.build_error(b"8", flp.UNKNOWN_SERVICE, "no service 'nope'"))
    assert (error.sequence, error.ok, error.status) == (8, False, b"404")
    assert error.reason == "no service 'nope'"


def test_ping_and_pong_are_one_frame_each() -> None:
    assert flp.is_ping([flp.PING]) and not flp.is_ping([flp.PING, b""])
    assert flp.is_pong([flp.PONG]) and not flp.is_pong([flp.PING])
    assert not flp.is_ping([])


@pytest.mark.parametrize("frames", [
    [], [b""], [b"PING", b"echo"], [b"-1", b"echo"], [b"1x", b"echo"],
    [b"1" * 21, b"echo"], [b"\xff", b"echo"],
])
def test_request_without_readable_sequence_is_a_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError) as caught:
        flp.parse_request(frames)
    assert not isinstance(caught.value, flp.MalformedRequest)


@pytest.mark.parametrize("frames", [[b"5"], [b"5", b""], [b"5", b"", b"body"]])
def test_request_without_service_is_malformed_and_keeps_its_sequence(
        frames: list[bytes]) -> None:
    with pytest.raises(flp.MalformedRequest) as caught:
        flp.parse_request(frames)
    assert caught.value.sequence == b"5"


@pytest.mark.parametrize("frames", [
    [], [b"1"], [b"x", b"200"], [b"1", b"201"], [b"1", b"OK"], [b"", b"200"],
])
def test_malformed_replies_are_protocol_errors(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        flp.parse_reply(frames)


def test_negative_sequence_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="not negative"):
        flp.build_request(-1, b"echo", [])
