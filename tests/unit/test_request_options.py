"""Delays and priorities on the wire: the options form of titanic.request, read back by the
server's handlers, and sent only to a server that names the extension."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from titanic.client.answers import request_options
from titanic.client.session import Ask, Conversation, TspSession
from titanic.dispatch.services import check_requests
from titanic.errors import ProtocolError, UsageError
from titanic.protocol import tsp
from titanic.protocol.mdp import Frames

UUID = b"0123456789abcdef0123456789abcdef"
AT = datetime(2026, 12, 24, 18, 0, tzinfo=UTC)


def test_the_options_form_round_trips_with_and_without_a_key() -> None:
    options = tsp.RequestOptions(int(AT.timestamp() * 1000), 5)
    for key in ("order-1", None):
        body = tsp.build_request(b"echo", [b"a", b""], key, options)
        assert body[:2] == [b"", b""]
        assert tsp.split_request_options(body) == (key, options, [b"echo", b"a", b""])
        assert tsp.split_request(body) == (key, [b"echo", b"a", b""])


def test_no_options_keeps_the_plain_and_keyed_forms() -> None:
    assert tsp.build_request(b"echo", [b"a"], None, tsp.RequestOptions()) == [b"echo", b"a"]
    assert tsp.build_request(b"echo", [b"a"], "k", tsp.RequestOptions()) == [
        b"", b"k", b"echo", b"a"]


@pytest.mark.parametrize("frame", [b"colour=red", b"priority=high", b"priority=1 priority=2",
                                   b"not_before=-5", b"priority", b"priority=" + b"9" * 30])
def test_an_option_the_server_does_not_know_is_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        tsp.RequestOptions.parse(frame)
    _, answers = check_requests([[b"", b"", frame, b"", b"echo", b"x"]], 1000)
    assert answers[0] is not None and answers[0][0] == b"400"


def test_the_handlers_read_the_time_and_priority_into_the_new_request() -> None:
    body = tsp.build_request(b"echo", [b"x"], "k", tsp.RequestOptions(
        int(AT.timestamp() * 1000), -7))
    accepted, answers = check_requests([body], 1000)
    assert answers == [None]
    ((_, request),) = accepted
    assert (request.service, request.frames, request.idempotency_key) == ("echo", (b"x",), "k")
    assert (request.not_before, request.priority) == (AT, -7)


def test_a_priority_out_of_the_stores_range_is_refused_by_the_server() -> None:
    body = tsp.build_request(b"echo", [b"x"], None, tsp.RequestOptions(None, 10**9))
    _, answers = check_requests([body], 1000)
    assert answers[0] is not None and answers[0][0] == b"400"


def test_the_client_refuses_a_naive_time_a_bad_priority_and_takes_a_delay() -> None:
    with pytest.raises(UsageError, match="time zone"):
        request_options(datetime(2026, 12, 24, 18, 0), 0)
    with pytest.raises(UsageError, match="priority"):
        request_options(None, 10**9)
    with pytest.raises(TypeError):
        request_options(None, True)
    options = request_options(timedelta(seconds=30), 2)
    expected = (datetime.now(UTC) + timedelta(seconds=30)).timestamp() * 1000
    assert options.not_before_ms is not None
    assert abs(options.not_before_ms - expected) < 2000 and options.priority == 2


def _run(conversation: Conversation[str], extensions: bytes) -> tuple[str, list[Frames]]:
    """Answer a submit from a titanic server naming `extensions`; what it sent, and its UUID."""
    sent: list[Frames] = []
    result: object = None
    while True:
        try:
            op = conversation.send(result)
        except StopIteration as done:
            return done.value, sent
        assert isinstance(op, Ask)
        if op.service == b"titanic.store":
            result = [b"200", b"a" * 32, b"sqlite:///t.db", b"1000", extensions]
        elif op.service == b"mmi.service":
            result = [b"200"]
        else:
            sent.append(op.body)
            result = [b"200", UUID]


def test_options_go_only_to_a_server_that_names_the_extension() -> None:
    options = tsp.RequestOptions(None, 3)
    uuid, sent = _run(TspSession(["tcp://b"], timeout=1, retries=0).submit(
        b"echo", [b"x"], "k", options), b"titanic.request.options titanic.wait")
    assert uuid == UUID.decode() and sent == [[b"", b"", b"", b"priority=3", b"k", b"echo", b"x"]]
    with pytest.raises(UsageError, match="no delay or priority"):
        _run(TspSession(["tcp://b"], timeout=1, retries=0).submit(
            b"echo", [b"x"], "k", options), b"titanic.wait")
