"""titanic.wait's held waits without sockets or a clock: held, answered, looked at again."""

from __future__ import annotations

from titanic.dispatch.held_waits import MAX_HOLD_S, Held, HeldWaits, parse_hold


def test_a_wait_body_is_a_uuid_and_milliseconds_capped() -> None:
    assert parse_hold([b"u" * 32, b"1500"]) == (b"u" * 32, 1.5, None)
    assert parse_hold([b"u" * 32, b"99999999"]) == (b"u" * 32, MAX_HOLD_S, None)
    assert parse_hold([b"u" * 32, b"1500", b"7"]) == (b"u" * 32, 1.5, 7)  # the follow form
    for bad in ([b"u" * 32], [b"u" * 32, b"-1"], [b"u" * 32, b"1.5"], [b"u" * 32, b""],
                [b"u" * 32, b"1", b"extra"], [b"u" * 32, b"1", b""],
                [b"u" * 32, b"1", b"2", b"3"]):
        assert parse_hold(bad) is None


def test_a_follow_is_answered_when_its_request_gains_parts_and_a_wait_is_not() -> None:
    waits = HeldWaits()
    waits.hold("follow", "r1", 0.0, 5.0)
    waits.hold("wait", "r1", 0.0, 5.0)
    assert waits.progressed(["r1", "r2"], lambda key: key == "follow") == [
        Held("follow", "r1", True)]
    assert waits.progressed(["r1"], lambda key: key == "follow") == []
    assert waits.finished(["r1"]) == [Held("wait", "r1", True)]


def test_a_finished_request_releases_every_wait_for_it_and_only_those() -> None:
    waits = HeldWaits()
    waits.hold("a", "r1", 0.0, 5.0)
    waits.hold("b", "r1", 0.0, 5.0)
    waits.hold("c", "r2", 0.0, 5.0)
    assert sorted(waits.finished(["r1", "unknown"])) == [Held("a", "r1", True),
                                                          Held("b", "r1", True)]
    assert len(waits) == 1
    assert waits.finished(["r1"]) == []


def test_a_pending_request_is_read_again_each_recheck_until_its_time_is_up() -> None:
    waits = HeldWaits(recheck=0.25)
    waits.hold("a", "r1", 0.0, 0.6)
    assert waits.next_wake() == 0.25
    assert waits.due(0.1) == []
    [looked] = waits.due(0.25)
    assert looked == Held("a", "r1", False)
    waits.keep(looked, 0.25)  # still pending
    assert waits.next_wake() == 0.5
    [again] = waits.due(0.5)
    waits.keep(again, 0.5)
    assert waits.next_wake() == 0.6  # its deadline comes before the next recheck
    assert waits.due(0.6) == [Held("a", "r1", True)]
    assert len(waits) == 0 and waits.next_wake() is None


def test_a_wait_answered_at_a_recheck_is_forgotten() -> None:
    waits = HeldWaits(recheck=0.25)
    waits.hold("a", "r1", 0.0, 5.0)
    [looked] = waits.due(0.3)
    waits.answered(looked)  # another dispatcher stored its reply
    assert len(waits) == 0 and waits.next_wake() is None


def test_waits_of_a_gone_connection_are_dropped() -> None:
    waits = HeldWaits()
    waits.hold(("conn1", b"x"), "r1", 0.0, 5.0)
    waits.hold(("conn2", b"y"), "r1", 0.0, 5.0)
    assert waits.drop([("conn1", b"x")]) == [Held(("conn1", b"x"), "r1", True)]
    assert waits.finished(["r1"]) == [Held(("conn2", b"y"), "r1", True)]
