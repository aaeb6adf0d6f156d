"""The dispatcher loops' timers (titanic.dispatch.schedule) on a clock the test moves: when the
periodic work runs, when a turn is due, and when the loop wakes."""

from __future__ import annotations

import pytest

from titanic.dispatch.schedule import TurnSchedule


class Planner:
    """The planner's side of the schedule: its deadlines, and a log of the periodic calls."""

    def __init__(self) -> None:
        self.held_until: float | None = None
        self.forward_until: float | None = None
        self.limit_until: float | None = None
        self.due_until: float | None = None
        self.calls: list[str] = []

    def release_stale(self) -> None:
        self.calls.append("release")

    def survey(self) -> None:
        self.calls.append("survey")


@pytest.fixture
def planner() -> Planner:
    return Planner()


def schedule_of(planner: Planner) -> TurnSchedule:
    return TurnSchedule(planner, release_interval=5.0, presence_interval=2.0)


def test_the_first_call_releases_and_surveys_and_the_first_turn_claims_at_once(
        planner: Planner) -> None:
    schedule = schedule_of(planner)
    schedule.run_due(0.0)  # a clock starting at zero: due all the same
    assert planner.calls == ["release", "survey"]
    assert schedule.more and schedule.turn_due(0.0)
    assert schedule.wake(0.0, 0.5) == 0.0


def test_each_periodic_call_repeats_on_its_own_interval(planner: Planner) -> None:
    schedule = schedule_of(planner)
    for now in (100.0, 101.0, 102.0, 103.9, 104.0, 105.0, 106.0):
        schedule.run_due(now)
        planner.calls.append(f"at {now}")
    assert planner.calls == [
        "release", "survey", "at 100.0", "at 101.0", "survey", "at 102.0", "at 103.9",
        "survey", "at 104.0", "release", "at 105.0", "survey", "at 106.0"]


def test_a_survey_makes_the_next_turn_claim_at_once(planner: Planner) -> None:
    schedule = schedule_of(planner)
    schedule.run_due(10.0)
    schedule.more = False
    assert not schedule.turn_due(11.0)
    schedule.run_due(11.0)  # the survey is not due yet
    assert not schedule.more
    schedule.run_due(12.0)
    assert schedule.more and schedule.wake(12.0) == 12.0


def test_without_more_to_claim_the_loop_wakes_at_the_next_periodic_call(
        planner: Planner) -> None:
    schedule = schedule_of(planner)
    schedule.run_due(10.0)
    schedule.more = False
    assert schedule.wake(10.5) == 12.0  # the survey, before the release at 15
    assert schedule.wake(10.5, None, None) == 12.0  # None: nothing to wait for


def test_the_loop_wakes_for_the_earliest_of_the_planner_and_the_loop_deadlines(
        planner: Planner) -> None:
    schedule = schedule_of(planner)
    schedule.run_due(10.0)
    schedule.more = False
    planner.forward_until = 11.5
    assert schedule.wake(10.5) == 11.5
    planner.held_until = 11.2
    assert schedule.wake(10.5) == 11.2
    assert schedule.wake(10.5, 11.1, None, 11.9) == 11.1  # a timeout, a heartbeat, ...


def test_held_replies_and_claims_make_a_turn_due_once_their_time_comes(
        planner: Planner) -> None:
    schedule = schedule_of(planner)
    schedule.run_due(0.0)
    schedule.more = False
    planner.held_until = 0.25
    assert not schedule.turn_due(0.2)
    assert schedule.turn_due(0.25)
    planner.held_until, planner.forward_until = None, 0.0
    assert schedule.turn_due(0.0)  # a deadline at the clock's zero is a deadline
    planner.forward_until = None
    assert not schedule.turn_due(1.0)


def test_a_service_held_back_by_its_rate_wakes_the_loop_when_its_token_comes(
        planner: Planner) -> None:
    schedule = schedule_of(planner)
    schedule.run_due(0.0)
    schedule.more = False
    planner.limit_until = 0.05
    assert schedule.wake(0.0) == 0.05
    assert not schedule.turn_due(0.04)
    assert schedule.turn_due(0.05)


def test_the_store_is_surveyed_again_when_its_earliest_later_request_comes_due(
        planner: Planner) -> None:
    schedule = schedule_of(planner)
    schedule.run_due(0.0)
    schedule.more = False
    planner.due_until = 0.7  # before the next survey (2.0)
    assert schedule.wake(0.1) == 0.7
    schedule.run_due(0.5)
    assert planner.calls == ["release", "survey"]
    schedule.run_due(0.7)
    assert planner.calls == ["release", "survey", "survey"] and schedule.more
