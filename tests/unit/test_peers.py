"""titanic.peer's codec and a site's book of peers and forwards, without sockets or clocks."""

from __future__ import annotations

import pytest

from titanic.dispatch.peers import MISSES_DOWN, POLL_FIRST_S, PeerBook
from titanic.errors import ProtocolError
from titanic.protocol import peer

FAR_ID = "0" * 31 + "1"


def _state(site: str, **services: tuple[int, int]) -> peer.SiteState:
    return peer.SiteState(site, "ab" * 16, services)


def test_a_replies_answer_round_trips() -> None:
    answers = [[b"200", b"a", b"b"], [b"300", b"pending"], [b"400", b"failed: boom"]]
    assert peer.parse_replies_answer(peer.build_replies_answer(answers), 3) == answers
    for bad, asked in (([b"500"], 0), ([b"200", b"2", b"x"], 1), ([b"200", b"1", b"x"], 2),
                       ([b"200", b"zero"], 1)):
        with pytest.raises(ProtocolError):
            peer.parse_replies_answer(bad, asked)


def test_an_ask_and_its_answer_round_trip() -> None:
    asking = _state("paris", echo=(2, 1))
    state, closes = peer.parse_ask(peer.build_ask(asking, [FAR_ID]))
    assert state == asking and closes == [FAR_ID]
    answering = _state("lyon", work=(4, 0))
    assert peer.parse_answer(peer.build_answer(answering)) == answering
    assert answering.serves("work") and not answering.serves("echo")


@pytest.mark.parametrize("body", [
    [b"paris"],
    [b"paris", b"not json"],
    [b"paris", b'{"site": "lyon"}'],  # names two sites
    [b"paris", b'{"site": "paris", "services": {"echo": [1]}}'],
    [b"paris", b'{"site": "paris", "services": {"echo": [-1, 0]}}'],
    [b"paris", b'{"site": "paris", "services": {"echo": [true, 0]}}'],
    [b"paris", b'{"site": "paris"}', b"not a uuid"],
    [b"a b", b'{"site": "a b"}'],
])
def test_a_malformed_ask_is_refused(body: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        peer.parse_ask(body)


@pytest.mark.parametrize("frames", [[b"404", b"{}"], [b"200"], [b"200", b"[]"]])
def test_a_malformed_answer_is_refused(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        peer.parse_answer(frames)


def test_peers_are_parsed_from_options_and_the_environment() -> None:
    assert peer.parse_peers("a=tcp://h:1, b=tcp://k:2") == [("a", "tcp://h:1"),
                                                            ("b", "tcp://k:2")]
    assert peer.parse_peers(["a=tcp://h:1", "b=tcp://k:2,c=ipc:///x"])[2] == ("c", "ipc:///x")
    for bad in ("a", "a=h:1", "=tcp://h:1", "a=tcp://h:1,a=tcp://k:2"):
        with pytest.raises(ValueError, match=r"peer|site"):
            peer.parse_peers(bad)


def test_a_link_is_down_after_missed_asks_and_up_at_an_answer() -> None:
    book = PeerBook([("far", "tcp://h:1")])
    assert not book.missed("far", 100.0)
    assert book.peers["far"].since == 100.0  # down from the start
    assert book.answered("far", _state("far", echo=(1, 0)), 101.0)
    assert book.peers["far"].up and book.peers["far"].since == 101.0
    for _ in range(MISSES_DOWN - 1):
        assert not book.missed("far", 102.0)
    assert book.missed("far", 103.0)
    far = book.peers["far"]
    assert not far.up and far.since == 103.0 and not far.serves("echo")


def test_a_service_goes_to_the_up_peer_with_the_most_free_workers() -> None:
    book = PeerBook([("a", "tcp://a:1"), ("b", "tcp://b:1"), ("c", "tcp://c:1")], window=2)
    book.answered("a", _state("a", echo=(2, 1)), 0.0)
    book.answered("b", _state("b", echo=(3, 0)), 0.0)
    book.answered("c", _state("c", work=(9, 0)), 0.0)
    assert book.routes() == {"echo", "work"}
    chosen = book.choose("echo")
    assert chosen is not None and chosen.name == "b"
    for n in range(2):  # b's window full: a takes the next
        book.claimed(f"{n}" * 32, "echo", chosen, 0.0, 60.0)
    other = book.choose("echo")
    assert other is not None and other.name == "a"
    assert book.choose("nothing") is None


def test_a_forward_is_sent_once_per_peer_and_its_reply_counted() -> None:
    book = PeerBook([("far", "tcp://h:1")])
    book.answered("far", _state("far", echo=(1, 0)), 0.0)
    far = book.peers["far"]
    request_id = "a" * 32
    assert book.claimed(request_id, "echo", far, 0.0, 60.0)
    book.acknowledged(request_id, FAR_ID, 0.1)  # first asked about 0.02 s later
    # Claimed again after its lease ran out, still at the same peer: only renewed.
    assert not book.claimed(request_id, "echo", far, 61.0, 60.0)
    assert book.forwards[request_id].lease_until == 121.0
    assert book.next_poll() == pytest.approx(0.12)
    assert book.polls_due(0.115, {"far": 10}) == []
    (due,) = book.polls_due(0.2, {"far": 10})
    assert due[0] == request_id and due[1].polling
    assert book.next_poll() is None
    book.learn({request_id: False})
    assert book.first_ask > 0.02  # found pending at its first ask: later next time
    book.still_pending(request_id, 1.0)  # pending there: asked again later, then less often
    assert book.forwards[request_id].next_poll == pytest.approx(1.0 + POLL_FIRST_S)
    book.polls_due(1.5, {"far": 10})
    book.still_pending(request_id, 2.0 - 2 * POLL_FIRST_S)
    assert book.forwards[request_id].next_poll == pytest.approx(2.0)
    assert book.polls_due(2.0, {"far": 0}) == []  # no room: put off a little
    assert book.next_poll() == pytest.approx(2.0 + POLL_FIRST_S)
    assert book.replied(request_id, 3.0) is not None
    (described,) = book.describe(3.0, {"echo": 5})
    assert described["forwarded"] == described["answered"] == 1
    assert described["answered_per_minute"] == 1 and described["waiting"] == 5
    assert book.describe(70.0)[0]["answered_per_minute"] == 0


def test_the_first_ask_moves_to_where_two_thirds_find_their_request_finished() -> None:
    book = PeerBook([("far", "tcp://h:1")])
    book.answered("far", _state("far", echo=(1, 0)), 0.0)
    far = book.peers["far"]
    # Requests there take from 0 to 0.3 s: two thirds are finished after 0.2 s. Asked about
    # in answers of 10, first_ask settles near 0.2 s.
    for batch in range(400):
        first: dict[str, bool] = {}
        for n in range(10):
            request_id = f"{batch * 10 + n:032x}"
            book.claimed(request_id, "echo", far, 0.0, 60.0)
            book.acknowledged(request_id, FAR_ID, 0.0)
            first[request_id] = n * 0.03 <= book.first_ask
        book.learn(first)
        book.learn(first)  # a second answer about them: not their first ask
        for request_id in first:
            book.replied(request_id, 1.0)
    assert book.first_ask == pytest.approx(0.2, abs=0.03)


def test_forwards_to_a_down_peer_lapse_with_their_lease() -> None:
    book = PeerBook([("far", "tcp://h:1")])
    book.answered("far", _state("far", echo=(1, 0)), 0.0)
    book.claimed("b" * 32, "echo", book.peers["far"], 0.0, 10.0)
    assert book.lapsed(20.0) == []  # the link is up: its reply is still awaited
    for _ in range(MISSES_DOWN):
        book.missed("far", 1.0)
    assert book.lapsed(5.0) == []
    assert book.lapsed(10.0) == ["b" * 32]
    assert not book.forwards

