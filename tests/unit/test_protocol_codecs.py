"""7/MDP, 18/MDP (RFC and majortomo's variant), 8/MMI and 9/TSP codecs: no sockets."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from titanic.errors import ProtocolError, UsageError
from titanic.protocol import mmi, tsp
from titanic.protocol.identity import IDENTITY_OPTION, Caller, caller_frame, parse_caller_frame
from titanic.protocol.mdp import (
    ClientRequest,
    Command,
    Dialect,
    WorkerCodec,
    WorkerMessage,
    build_client_reply,
    build_client_request,
    build_ready,
    build_worker,
    parse_client_reply,
    parse_peer_message,
    parse_worker_inbound,
)

DIALECTS = list(Dialect)
frames_st = st.lists(st.binary(max_size=40), max_size=6)


def test_wire_formats_match_the_rfcs_and_majortomo() -> None:
    assert build_client_request(Dialect.MDP01, b"echo", [b"hi"]) == [b"", b"MDPC01", b"echo", b"hi"]
    assert build_client_request(Dialect.MDP02, b"echo", [b"hi"]) == [b"MDPC02", b"\x01", b"echo",
                                                                     b"hi"]
    assert build_client_request(Dialect.MAJORTOMO, b"echo", [b"hi"]) == [
        b"", b"MDPC02", b"\x02", b"echo", b"hi"]
    assert build_worker(Dialect.MDP01, Command.READY, b"echo") == [b"", b"MDPW01", b"\x01", b"echo"]
    assert build_worker(Dialect.MDP01, Command.FINAL, b"c", b"r") == [
        b"", b"MDPW01", b"\x03", b"c", b"", b"r"]
    assert build_worker(Dialect.MDP01, Command.HEARTBEAT) == [b"", b"MDPW01", b"\x04"]
    assert build_worker(Dialect.MDP01, Command.DISCONNECT) == [b"", b"MDPW01", b"\x05"]
    assert build_worker(Dialect.MDP02, Command.PARTIAL, b"c", b"p") == [
        b"MDPW02", b"\x03", b"c", b"", b"p"]
    assert build_worker(Dialect.MDP02, Command.DISCONNECT) == [b"MDPW02", b"\x06"]
    assert build_worker(Dialect.MAJORTOMO, Command.FINAL, b"c") == [
        b"", b"MDPW02", b"\x04", b"c", b""]
    assert build_client_reply(Dialect.MDP02, b"s", [b"r"], final=False) == [
        b"MDPC02", b"\x02", b"s", b"r"]
    assert build_client_reply(Dialect.MDP02, b"s", [b"r"]) == [b"MDPC02", b"\x03", b"s", b"r"]
    assert build_client_reply(Dialect.MAJORTOMO, b"s", [b"r"]) == [b"", b"MDPC02", b"\x04", b"r"]
    assert build_client_reply(Dialect.MAJORTOMO, b"s", [b"r"], final=False) == [
        b"", b"MDPC02", b"\x03", b"r"]


@pytest.mark.parametrize("dialect", DIALECTS)
@given(service=st.binary(min_size=1, max_size=20), body=frames_st)
def test_client_request_round_trips(dialect: Dialect, service: bytes, body: list[bytes]) -> None:
    parsed = parse_peer_message(build_client_request(dialect, service, body))
    assert parsed == ClientRequest(dialect, service, body)


@pytest.mark.parametrize("dialect", DIALECTS)
@given(service=st.binary(min_size=1, max_size=20), body=frames_st, final=st.booleans())
def test_client_reply_round_trips(dialect: Dialect, service: bytes, body: list[bytes],
                                  final: bool) -> None:
    final = final or dialect is Dialect.MDP01
    reply = parse_client_reply(dialect, build_client_reply(dialect, service, body, final=final))
    assert (reply.final, reply.body) == (final, body)
    assert reply.service == (b"" if dialect is Dialect.MAJORTOMO else service)


@pytest.mark.parametrize("dialect", DIALECTS)
@given(client=st.binary(min_size=1, max_size=8), body=frames_st)
def test_worker_commands_round_trip(dialect: Dialect, client: bytes, body: list[bytes]) -> None:
    commands = [Command.FINAL] + ([] if dialect is Dialect.MDP01 else [Command.PARTIAL])
    for command in commands:
        parsed = parse_peer_message(build_worker(dialect, command, client, *body))
        assert parsed == WorkerMessage(dialect, command, client, body)
    request = parse_worker_inbound(dialect, build_worker(dialect, Command.REQUEST, client, *body))
    assert request == WorkerMessage(dialect, Command.REQUEST, client, body)
    for command in (Command.HEARTBEAT, Command.DISCONNECT):
        assert parse_peer_message(build_worker(dialect, command)).command is command
        assert parse_worker_inbound(dialect, build_worker(dialect, command)).command is command
    ready = parse_peer_message(build_worker(dialect, Command.READY, b"svc"))
    assert ready == WorkerMessage(dialect, Command.READY, b"svc", [])


@pytest.mark.parametrize(("frames", "complaint"), [
    ([], "empty message"),
    ([b""], "only the empty delimiter"),
    ([b"", b"MDPX01"], "unknown protocol header"),
    ([b"HELLO"], "unknown protocol header"),
    ([b"", b"MDPC01"], "no service frame"),
    ([b"MDPC02", b"\x01"], "truncated"),
    ([b"MDPC02", b"\x07", b"svc"], "client sent command"),
    ([b"", b"MDPW01"], "no command"),
    ([b"", b"MDPW01", b"\x09"], "unknown 7/MDP worker command"),
    ([b"", b"MDPW01", b"\x01"], "READY must carry exactly one"),
    ([b"", b"MDPW01", b"\x01", b"a", b"b"], "unknown READY option"),
    ([b"", b"MDPW01", b"\x01", b"a", b"titanic:identity/1", b"c"], "READY must carry exactly one"),
    ([b"", b"MDPW01", b"\x04", b"extra"], "unexpected frames"),
    ([b"MDPW02", b"\x06", b"why", b"extra"], "unexpected frames"),
    ([b"", b"MDPW01", b"\x03", b"client"], "missing the client address or delimiter"),
    ([b"", b"MDPW01", b"\x03", b"client", b"x", b"body"], "no empty delimiter"),
    ([b"", b"MDPW01", b"\x03", b"", b"", b"body"], "empty client address"),
    ([b"", b"MDPW01", b"\x03\x03"], "unknown 7/MDP worker command"),
])
def test_malformed_messages_say_what_is_wrong(frames: list[bytes], complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        parse_peer_message(frames)


def test_seven_mdp_has_no_partial_and_workers_cannot_receive_ready() -> None:
    with pytest.raises(UsageError):
        build_worker(Dialect.MDP01, Command.PARTIAL, b"c")
    with pytest.raises(UsageError):
        build_client_reply(Dialect.MDP01, b"s", [], final=False)
    with pytest.raises(ProtocolError, match="broker sent worker command READY"):
        parse_worker_inbound(Dialect.MDP01, [b"", b"MDPW01", b"\x01", b"svc"])


@given(st.lists(st.binary(max_size=12), max_size=8))
def test_arbitrary_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    for parse in (parse_peer_message,
                  *(lambda f, d=d: parse_worker_inbound(d, f) for d in DIALECTS),
                  *(lambda f, d=d: parse_client_reply(d, f) for d in DIALECTS)):
        with contextlib.suppress(ProtocolError):
            parse(frames)


@given(st.lists(st.sampled_from([b"", b"MDPC01", b"MDPW01", b"MDPC02", b"MDPW02", b"\x01",
                                 b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"svc"]),
                max_size=8))
def test_header_shaped_garbage_raises_only_protocol_error(frames: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        parse_peer_message(frames)


def test_mmi_answers() -> None:
    def live(name: bytes) -> bool:
        return name == b"echo"

    assert mmi.answer(b"mmi.service", [b"echo"], live) == b"200"
    assert mmi.answer(b"mmi.service", [b"gone"], live) == b"404"
    assert mmi.answer(b"mmi.service", [], live) == b"404"
    assert mmi.answer(b"mmi.stats", [b"echo"], live) == b"501"
    assert mmi.is_mmi(b"mmi.anything") and not mmi.is_mmi(b"echo")


def test_tsp_status_and_uuid_frames() -> None:
    assert tsp.Status.PENDING.frame("pending") == b"300 pending"
    assert tsp.parse_status(b"300 pending") == 300
    assert tsp.parse_status(b"200") == 200
    assert tsp.status_text(b"400 failed: boom") == "failed: boom"
    assert tsp.Status.UNKNOWN.answer("failed: boom") == [b"400", b"failed: boom"]
    assert tsp.answer_text([b"400", b"failed: boom"]) == "failed: boom"
    assert tsp.answer_text([b"400 failed: boom"]) == "failed: boom"
    assert tsp.answer_text([b"300"]) == ""
    for bad in [b"", b"20", b"2000", b"abc", b"200x"]:
        with pytest.raises(ProtocolError):
            tsp.parse_status(bad)
    assert tsp.parse_uuid(b"ABCDEF" + b"0" * 26) == "abcdef" + "0" * 26
    for bad in [b"", b"0" * 31, b"g" * 32, b"0" * 8 + b"-" + b"0" * 23]:
        with pytest.raises(ProtocolError):
            tsp.parse_uuid(bad)


# -- titanic's identity extension -----------------------------------------------------------------

KEY = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"


def test_ready_may_ask_for_identities_and_requests_then_carry_the_caller() -> None:
    ready = parse_peer_message(build_ready(Dialect.MDP01, b"svc", identities=True))
    assert ready == WorkerMessage(Dialect.MDP01, Command.READY, b"svc", [IDENTITY_OPTION])
    codec = WorkerCodec(Dialect.MDP01)
    plain = build_worker(Dialect.MDP01, Command.REQUEST, b"client", b"", b"body")
    assert codec.request_with_caller(plain) == (b"client", None, [b"", b"body"])
    framed = [*plain[:4], caller_frame(KEY, admin=False), *plain[4:]]
    assert codec.request_with_caller(framed) == (b"client", b"client " + KEY, [b"", b"body"])
    assert codec.request(framed) is None  # a worker that did not ask takes it for malformed
    assert parse_caller_frame(caller_frame(KEY, admin=True)) == Caller(KEY.decode(), True)
    assert parse_caller_frame(b"client " + KEY) == Caller(KEY.decode(), False)


@pytest.mark.parametrize(("frame", "complaint"), [
    (b"root " + KEY, "neither"),
    (b"client " + KEY[:-1], "not a 40-character"),
    (b"admin " + b"\xff" * 40, "not ASCII"),
])
def test_malformed_caller_frames_are_refused(frame: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        parse_caller_frame(frame)
