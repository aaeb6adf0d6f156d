"""Each service's in-flight window: widened by timely replies, halved by late ones, restarted
small after an outage."""

from __future__ import annotations

from titanic.client import Completion
from titanic.dispatch.in_flight import LATE_SHARE, RESTART, START, Windows
from titanic.dispatch.planner import Forwarded, Planner, PresenceCheck
from titanic.dispatch.settings import DispatcherSettings, DispatcherStats
from titanic.testing import MemoryStore, MemoryTransport

TIMEOUT = 10.0
LATE = TIMEOUT * LATE_SHARE


def test_a_window_starts_at_start_or_the_cap_if_lower() -> None:
    assert Windows(128, TIMEOUT).limit("echo") == START
    assert Windows(START - 1, TIMEOUT).limit("echo") == START - 1


def test_timely_replies_widen_the_window_one_each_up_to_the_cap() -> None:
    windows = Windows(START + 3, TIMEOUT)
    for n in range(5):
        windows.answered("echo", sent=100.0, now=100.0 + LATE / 2)
        assert windows.limit("echo") == min(START + n + 1, START + 3)
    assert windows.limit("other") == START  # each service has its own


def test_a_late_reply_halves_the_window_once_per_round_trip() -> None:
    windows = Windows(128, TIMEOUT)
    for _ in range(32 - START):  # widened to 32 first
        windows.answered("slow", sent=0.0, now=0.1)
    windows.answered("slow", sent=0.0, now=LATE + 1.0)
    assert windows.limit("slow") == 16
    # Sent before that cut: the same congestion, no second cut.
    windows.answered("slow", sent=0.5, now=LATE + 2.0)
    assert windows.limit("slow") == 16
    # Sent after it and late again: halved again.
    windows.answered("slow", sent=LATE + 1.5, now=2 * LATE + 3.0)
    assert windows.limit("slow") == 8


def test_timeouts_halve_the_window_down_to_one_request() -> None:
    windows = Windows(128, TIMEOUT)
    for n in range(10):
        windows.failed("dead", sent=float(n * 100), now=float(n * 100 + 10))
    assert windows.limit("dead") == 1
    windows.answered("dead", sent=2000.0, now=2000.1)
    assert windows.limit("dead") == 2  # and it grows back with timely replies


def test_a_restart_narrows_the_window_and_what_was_sent_before_neither_widens_nor_cuts_it(
        ) -> None:
    windows = Windows(128, TIMEOUT)
    for _ in range(20):
        windows.answered("echo", sent=0.0, now=0.1)
    windows.restart("echo", now=5.0, in_flight=3)  # three sent before it, still unanswered
    assert windows.limit("echo") == 3 + RESTART
    windows.answered("echo", sent=4.0, now=5.1)  # one of them: its room goes with it
    windows.failed("echo", sent=4.0, now=14.0)  # another, timed out: the same, no cut
    assert windows.limit("echo") == 1 + RESTART
    windows.answered("echo", sent=5.5, now=5.6)  # sent after the restart: widens it
    assert windows.limit("echo") == 2 + RESTART
    windows.answered("echo", sent=4.0, now=5.7)  # the last of the three
    assert windows.limit("echo") == 1 + RESTART
    windows.answered("echo", sent=4.0, now=5.8)
    windows.answered("echo", sent=4.0, now=5.9)  # more than there were: never below one
    assert windows.limit("echo") == 1
    windows.restart("new", now=5.0)
    assert windows.limit("new") == RESTART
    windows.restart("idle", now=5.0, in_flight=2, room=START)  # never wider than it was
    assert windows.limit("idle") == START


def _planner(cap: int) -> tuple[Planner, MemoryStore, MemoryTransport]:
    store, transport = MemoryStore(), MemoryTransport(slots=4 * cap)
    settings = DispatcherSettings(max_in_flight_per_service=cap, request_timeout=TIMEOUT)
    return Planner(store, transport, settings, DispatcherStats()), store, transport


def _sent_by(planner: Planner, transport: MemoryTransport, completions: list[Completion],
             now: float) -> list[Forwarded]:
    """What a turn bringing these completions forwarded."""
    before = len(transport.sent)
    planner.turn([], completions, now, answer=lambda _: None)
    return [tag for _, _, tag in transport.sent[before:] if isinstance(tag, Forwarded)]


def _forwarded(transport: MemoryTransport) -> list[Forwarded]:
    return [tag for tag in transport.in_flight if isinstance(tag, Forwarded)]


def test_the_planner_forwards_more_to_a_service_that_keeps_up_less_after_timeouts() -> None:
    planner, store, transport = _planner(cap=4 * START)
    for n in range(300):
        store.submit("echo", [str(n).encode()])
    planner.survey()
    planner.turn([], [], 1.0, answer=lambda _: None)
    present = [transport.complete(PresenceCheck("echo"), [b"200"])]
    assert len(_sent_by(planner, transport, present, 1.1)) == START
    # START timely replies: the window doubles.
    replies = [transport.complete(tag, [b"ok"]) for tag in _forwarded(transport)]
    assert len(_sent_by(planner, transport, replies, 1.2)) == 2 * START
    # Then up to the cap.
    replies = [transport.complete(tag, [b"ok"]) for tag in _forwarded(transport)]
    assert len(_sent_by(planner, transport, replies, 1.3)) == 4 * START
    # All of those time out: retried later, and the window is halved (once: one round trip).
    timeouts = [transport.time_out(tag) for tag in _forwarded(transport)]
    _sent_by(planner, transport, timeouts, 20.0)
    assert planner.windows.limit("echo") == 2 * START
    present = [transport.complete(PresenceCheck("echo"), [b"200"])]  # asked again after them
    assert len(_sent_by(planner, transport, present, 20.1)) == 2 * START


def _reply_to_all(planner: Planner, transport: MemoryTransport, now: float) -> list[Forwarded]:
    replies = [transport.complete(tag, [b"ok"]) for tag in _forwarded(transport)]
    return _sent_by(planner, transport, replies, now)


def _widened(cap: int, due: int) -> tuple[Planner, MemoryStore, MemoryTransport]:
    """A planner forwarding to "echo" at its cap, with `due` requests stored for it."""
    planner, store, transport = _planner(cap)
    for n in range(due):
        store.submit("echo", [str(n).encode()])
    planner.survey()
    planner.turn([], [], 1.0, answer=lambda _: None)
    _sent_by(planner, transport, [transport.complete(PresenceCheck("echo"), [b"200"])], 1.1)
    for step in range(10):  # the window doubles with each round of timely replies
        if len(_forwarded(transport)) == cap:
            return planner, store, transport
        _reply_to_all(planner, transport, 1.2 + step / 10)
    raise AssertionError(f"not widened to {cap}: {len(_forwarded(transport))} in flight")


def test_after_losing_its_broker_the_planner_asks_mmi_again_and_forwards_one_at_first() -> None:
    # Widened to 32 (8, 16 and 32 sent in turn), then 5 more sent: all that was due.
    planner, store, transport = _widened(cap=4 * START, due=8 + 16 + 32 + 5)
    _reply_to_all(planner, transport, 2.0)
    before = _forwarded(transport)
    assert len(before) == 5 and planner.windows.limit("echo") == 4 * START
    for n in range(100):
        store.submit("echo", [f"later {n}".encode()])
    planner.survey()
    planner.broker_lost(2.1)
    # Nothing more goes to "echo" before the broker says it has workers now: until they
    # register again, what it got would wait in its queue.
    assert _sent_by(planner, transport, [], 2.2) == []
    assert PresenceCheck("echo") in transport.in_flight
    present = [transport.complete(PresenceCheck("echo"), [b"200"])]
    assert len(_sent_by(planner, transport, present, 2.3)) == RESTART  # beside the 5 before
    # The replies to those sent before the loss widen nothing; their room goes with them.
    old = [transport.complete(tag, [b"ok"]) for tag in before]
    assert _sent_by(planner, transport, old, 2.4) == []
    # Then one more for each timely reply to what was sent since.
    assert len(_reply_to_all(planner, transport, 2.5)) == RESTART + 1
    assert len(_reply_to_all(planner, transport, 2.6)) == RESTART + 3


def test_a_service_with_workers_again_after_none_gets_what_waited_start_at_first() -> None:
    planner, _, transport = _widened(cap=4 * START, due=200)
    _reply_to_all(planner, transport, 2.0)
    assert planner.windows.limit("echo") == 4 * START
    # No reply in time from any of them (the workers died): timed out, the window halved once.
    timeouts = [transport.time_out(tag) for tag in _forwarded(transport)]
    _sent_by(planner, transport, timeouts, 15.0)
    assert planner.windows.limit("echo") == 2 * START
    assert transport.in_flight == [PresenceCheck("echo")]
    _sent_by(planner, transport, [transport.complete(PresenceCheck("echo"), [b"404"])], 15.1)
    planner.turn([], [], 15.1 + planner.settings.presence_interval, answer=lambda _: None)
    present = [transport.complete(PresenceCheck("echo"), [b"200"])]
    assert len(_sent_by(planner, transport, present, 16.5)) == START
