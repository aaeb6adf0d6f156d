"""When a dispatcher's loop runs its periodic work, and when it must wake next.

Both loops call one `TurnSchedule`: the standalone dispatcher's own (titanic.dispatch.standalone)
and the broker's, which runs the hosted dispatcher's turns (titanic.dispatch.hosted). Stale
leases are released every `release_interval`; the store is surveyed for services with due
requests every `presence_interval`, and also when the earliest request not yet due at the last
survey comes due (a scheduled one, a retry after its backoff); a turn claims at once after
each survey. Between turns
the loop sleeps until the earliest of those, of the planner's own deadlines (replies held back
by reply_linger, claims held back by forward_linger, a service's next token under its rate
limit) and of what the loop adds (the transport's
next timeout, the held titanic.waits, the connections' heartbeats). The times are the loop's
monotonic clock, passed in: nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

from typing import Protocol


class Periodic(Protocol):
    """What the schedule drives: the dispatcher's planner (titanic.dispatch.planner.Planner)."""

    @property
    def held_until(self) -> float | None:
        """When replies held back must be stored, even alone (None: none held)."""

    @property
    def forward_until(self) -> float | None:
        """When claims held back must be sent, even alone (None: none held)."""

    @property
    def limit_until(self) -> float | None:
        """When a service held back by its rate limit may claim again (None: none is)."""

    @property
    def due_until(self) -> float | None:
        """When the earliest request not yet due at the last survey is due (None: none)."""

    def release_stale(self) -> None:
        """Requests whose lease ran out become pending again."""

    def survey(self) -> None:
        """Look at the store for services with due requests."""


class TurnSchedule:
    """The timers of a dispatcher's loop: see the module docstring."""

    def __init__(self, planner: Periodic, *, release_interval: float,
                 presence_interval: float) -> None:
        self._planner = planner
        self._release_interval = release_interval
        self._presence_interval = presence_interval
        self._next_release = self._next_survey = float("-inf")  # both due at the first call
        #: A service may have more due than the last turn claimed: the next turn runs at once.
        #: True at first, so that the first turn claims whatever is due.
        self.more = True

    def run_due(self, now: float) -> None:
        """Release stale leases and survey the store, each when its interval has passed."""
        if now >= self._next_release:
            self._planner.release_stale()
            self._next_release = now + self._release_interval
        due = self._planner.due_until
        if now >= self._next_survey or (due is not None and now >= due):
            self._planner.survey()
            self._next_survey = now + self._presence_interval
            self.more = True

    def turn_due(self, now: float) -> bool:
        """Whether a turn must run now even if nothing came: it has more to claim, or what
        the planner held back is due."""
        planner = self._planner
        return self.more or any(until is not None and now >= until
                                for until in (planner.held_until, planner.forward_until,
                                              planner.limit_until))

    def wake(self, now: float, *others: float | None) -> float:
        """When the loop must run again at the latest: `now` while there is more to claim,
        else the earliest of the next release, the next survey, the planner's held replies and
        claims, and `others` (None: not at all)."""
        if self.more:
            return now
        planner = self._planner
        times = (self._next_release, self._next_survey, planner.held_until,
                 planner.forward_until, planner.limit_until, planner.due_until, *others)
        return min(time for time in times if time is not None)
