"""Each service's in-flight window: widened by timely replies, halved by late ones, restarted
small after an outage."""

from __future__ import annotations

from titanic.client import Completion
from titanic.dispatcher import DispatcherSettings, DispatcherStats
from titanic.in_flight import LATE_SHARE, RESTART, START, Windows
from titanic.planner import Forwarded, Planner, PresenceCheck
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


def test_a_restart_narrows_the_window_and_what_was_sent_before_does_not_cut_it_again() -> None:
    windows = Windows(128, TIMEOUT)
    for _ in range(20):
        windows.answered("echo", sent=0.0, now=0.1)
    windows.restart("echo", now=5.0)
    assert windows.limit("echo") == RESTART
    windows.failed("echo", sent=4.0, now=14.0)  # sent before the restart
    windows.answered("echo", sent=5.5, now=5.6)
    assert windows.limit("echo") == RESTART + 1  # grows back with timely replies
    windows.restart("new", now=5.0)
    assert windows.limit("new") == RESTART


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
    planner, store, transport = _widened(cap=4 * START, due=200)
    replies = [transport.complete(tag, [b"ok"]) for tag in _forwarded(transport)]
    planner.broker_lost(2.0)
    # The replies that come now are stored, but nothing more goes to "echo" before the
    # restarted broker says it has workers: until they register, it would wait there.
    assert _sent_by(planner, transport, replies, 2.1) == []
    assert transport.in_flight == [PresenceCheck("echo")]
    absent = [transport.complete(PresenceCheck("echo"), [b"404"])]
    assert _sent_by(planner, transport, absent, 2.2) == []
    planner.turn([], [], 2.2 + planner.settings.presence_interval, answer=lambda _: None)
    present = [transport.complete(PresenceCheck("echo"), [b"200"])]
    assert len(_sent_by(planner, transport, present, 3.5)) == RESTART
    # Then as the workers answer: one more for each timely reply.
    assert len(_reply_to_all(planner, transport, 3.6)) == RESTART + 1
    assert len(_reply_to_all(planner, transport, 3.7)) == RESTART + 3


def test_a_service_with_workers_again_after_none_gets_what_waited_one_at_first() -> None:
    planner, store, transport = _widened(cap=4 * START, due=200)
    _reply_to_all(planner, transport, 2.0)
    assert planner.windows.limit("echo") == 4 * START
    timeouts = [transport.time_out(tag) for tag in _forwarded(transport)]  # the workers died
    _sent_by(planner, transport, timeouts, 15.0)
    assert transport.in_flight == [PresenceCheck("echo")]
    _sent_by(planner, transport, [transport.complete(PresenceCheck("echo"), [b"404"])], 15.1)
    planner.turn([], [], 15.1 + planner.settings.presence_interval, answer=lambda _: None)
    present = [transport.complete(PresenceCheck("echo"), [b"200"])]
    assert len(_sent_by(planner, transport, present, 16.5)) == RESTART
