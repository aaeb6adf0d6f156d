"""The Freelance client's decisions without a socket: liveness, failover, timeouts, stale replies.

Servers are played by hand: what the session sends is read from its outbox, and answers are fed
to `receive` with a time chosen by the test.
"""

from __future__ import annotations

import pytest

from titanic.client.flp_session import FreelanceSession
from titanic.errors import FreelanceTimeoutError, ServiceRefusedError
from titanic.protocol import flp

A, B, C = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"


def _session(*endpoints: str) -> FreelanceSession:
    return FreelanceSession(list(endpoints) or [A, B], 0.0, ping_interval=0.25, liveness=4,
                            attempt_timeout=1.0, probe_interval=0.005)


def _requests(session: FreelanceSession) -> list[tuple[str, list[bytes]]]:
    return [(identity.decode(), frames) for identity, frames in session.take_outbox()
            if not flp.is_ping(frames)]


def _pong_all(session: FreelanceSession, now: float, *endpoints: str) -> None:
    for endpoint in endpoints:
        session.receive(endpoint.encode(), [flp.PONG], now)


def test_first_tick_pings_every_server() -> None:
    session = _session(A, B, C)
    session.tick(0.0)
    assert sorted(identity for identity, frames in session.take_outbox()
                  if flp.is_ping(frames)) == [A.encode(), B.encode(), C.encode()]


def test_request_waits_for_a_pong_then_goes_out() -> None:
    session = _session()
    session.request(b"echo", [b"hi"], 2.5, 0.0)
    assert _requests(session) == []
    _pong_all(session, 0.01, B)
    assert _requests(session) == [(B, [b"1", b"echo", b"hi"])]


def test_reply_completes_request_and_late_duplicate_is_stale() -> None:
    session = _session()
    _pong_all(session, 0.0, A)
    sequence = session.request(b"echo", [b"hi"], 2.5, 0.0, tag="t")
    session.receive(A.encode(), flp.build_reply(b"%d" % sequence, flp.OK, [b"hi"]), 0.01)
    [done] = session.take_completions()
    assert (done.tag, done.reply, done.error, done.server) == ("t", [b"hi"], None, A)
    session.receive(A.encode(), flp.build_reply(b"%d" % sequence, flp.OK, [b"hi"]), 0.02)
    assert session.take_completions() == [] and session.stale_replies == 1


def test_requests_alternate_between_live_servers() -> None:
    session = _session()
    _pong_all(session, 0.0, A, B)
    for _ in range(4):
        session.request(b"echo", [], 2.5, 0.0)
    assert sorted(server for server, _ in _requests(session)) == [A, A, B, B]


def test_dead_server_requests_go_to_the_other() -> None:
    session = _session()
    _pong_all(session, 0.0, A)
    session.request(b"echo", [b"x"], 5.0, 0.0)
    assert [server for server, _ in _requests(session)] == [A]
    # B comes up and keeps answering; A falls silent and is dead after 4 intervals (1 s)
    for step in range(1, 5):
        now = step * 0.25
        _pong_all(session, now - 0.01, B)
        session.tick(now - 0.001)
    assert _requests(session) == []  # A not dead yet: 0.999 s of silence
    session.tick(1.0)
    assert _requests(session) == [(B, [b"1", b"echo", b"x"])]
    assert session.resent == 1 and session.alive(1.0) == [B]


def test_unanswered_attempt_is_sent_elsewhere_after_attempt_timeout() -> None:
    session = _session()
    _pong_all(session, 0.0, A, B)
    session.request(b"echo", [], 5.0, 0.0)
    [(first, _)] = _requests(session)
    _pong_all(session, 0.9, A, B)
    session.tick(1.0)
    [(second, _)] = _requests(session)
    assert {first, second} == {A, B}


def test_reply_from_the_first_server_after_a_resend_still_counts() -> None:
    session = _session()
    _pong_all(session, 0.0, A, B)
    session.request(b"echo", [], 5.0, 0.0, tag=1)
    [(first, frames)] = _requests(session)
    _pong_all(session, 0.9, A, B)
    session.tick(1.0)
    session.receive(first.encode(), flp.build_reply(frames[0], flp.OK, [b"late"]), 1.1)
    assert [done.reply for done in session.take_completions()] == [[b"late"]]


def test_unreachable_server_is_probed_quickly_then_less_often() -> None:
    session = _session(A)
    session.tick(0.0)
    session.take_outbox()
    session.unreachable(A.encode(), [flp.PING], 0.0)
    assert session.next_deadline() == pytest.approx(0.005)
    session.tick(0.005)
    session.take_outbox()
    session.unreachable(A.encode(), [flp.PING], 0.005)
    assert session.next_deadline() == pytest.approx(0.015)


def test_refused_send_reroutes_the_request_at_once() -> None:
    session = _session()
    _pong_all(session, 0.0, A, B)
    session.request(b"echo", [], 5.0, 0.0)
    [(first, frames)] = _requests(session)
    session.unreachable(first.encode(), frames, 0.01)
    [(second, _)] = _requests(session)
    assert second != first and session.alive(0.01) == [second]


def test_timeout_when_no_server_ever_answers_names_them() -> None:
    session = _session()
    session.request(b"echo", [], 1.0, 0.0, tag="t")
    session.tick(1.0)
    [done] = session.take_completions()
    assert isinstance(done.error, FreelanceTimeoutError) and done.reply is None
    assert "no server answered a PING" in str(done.error) and A in str(done.error)
    assert session.in_flight == 0


def test_unknown_service_tries_another_server_then_fails_with_404() -> None:
    session = _session()
    _pong_all(session, 0.0, A, B)
    session.request(b"nope", [], 5.0, 0.0)
    [(first, frames)] = _requests(session)
    session.receive(first.encode(), flp.build_error(frames[0], flp.UNKNOWN_SERVICE, "no"), 0.01)
    [(second, frames)] = _requests(session)
    assert second != first and session.take_completions() == []
    session.receive(second.encode(), flp.build_error(frames[0], flp.UNKNOWN_SERVICE, "no"), 0.02)
    [done] = session.take_completions()
    assert isinstance(done.error, ServiceRefusedError) and done.error.code == 404


def test_malformed_and_foreign_messages_are_dropped_and_counted() -> None:
    session = _session()
    session.receive(A.encode(), [b"garbage"], 0.0)
    session.receive(A.encode(), [b"1", b"999", b"x"], 0.0)
    session.receive(b"tcp://elsewhere:9", [flp.PONG], 0.0)
    assert session.dropped == 3 and session.take_completions() == []


def test_reply_to_unknown_sequence_is_stale() -> None:
    session = _session()
    session.receive(A.encode(), flp.build_reply(b"77", flp.OK, []), 0.0)
    assert session.stale_replies == 1


def test_cancelled_request_makes_its_reply_stale() -> None:
    session = _session()
    _pong_all(session, 0.0, A)
    sequence = session.request(b"echo", [], 5.0, 0.0)
    session.cancel(sequence)
    session.receive(A.encode(), flp.build_reply(b"%d" % sequence, flp.OK, []), 0.1)
    assert session.take_completions() == [] and session.stale_replies == 1


def test_404_waits_for_a_server_not_heard_from_yet_at_start() -> None:
    session = _session()
    _pong_all(session, 0.0, A)
    session.request(b"svc", [b"x"], 5.0, 0.0, tag="t")
    [(_, frames)] = _requests(session)
    session.receive(A.encode(), flp.build_error(frames[0], flp.UNKNOWN_SERVICE, "no"), 0.01)
    assert session.take_completions() == []  # B may have it: its first PONG is on the way
    _pong_all(session, 0.02, B)
    [(server, frames)] = _requests(session)
    assert server == B
    session.receive(B.encode(), flp.build_reply(frames[0], flp.OK, [b"x"]), 0.03)
    [done] = session.take_completions()
    assert (done.reply, done.server) == ([b"x"], B)


def test_404_is_final_once_the_first_liveness_window_is_over() -> None:
    session = _session()
    _pong_all(session, 0.0, A)
    session.request(b"svc", [], 5.0, 0.0)
    [(_, frames)] = _requests(session)
    session.receive(A.encode(), flp.build_error(frames[0], flp.UNKNOWN_SERVICE, "no"), 0.01)
    assert session.next_deadline() <= 1.0  # the window: 4 intervals of 0.25 s
    _pong_all(session, 0.9, A)
    session.tick(1.0)
    [done] = session.take_completions()
    assert isinstance(done.error, ServiceRefusedError) and done.error.code == 404
    assert session.in_flight == 0
