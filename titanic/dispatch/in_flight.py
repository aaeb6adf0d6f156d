"""How many forwarded requests each service may have in flight at once: a window per service.

A deep window keeps a fast service's workers busy while the dispatcher waits on its store (the
replies of one round trip are stored and the next requests claimed in one turn, with more in
the broker's queue meanwhile). For a slow service the same depth would only queue requests in
the broker, where their request timeout already runs, and they would be sent twice. So each
service's window starts at `START` (or the cap, if lower) and adapts, the way TCP's congestion
window does: every reply that came back within a quarter of the request timeout widens it by
one, up to the cap (`max_in_flight_per_service`), which doubles it per round trip while the
service keeps up; a reply that took longer, or a request that timed out, halves it (down to
one), once per round trip: requests sent before the last cut do not cut again.

After an outage a window restarts small, as TCP's does: when the dispatcher lost its broker (it
had to register with it again), to `RESTART` request beyond those still in flight from before,
as after a retransmission timeout; when a service that had no workers has some again, to at
most `START` beyond them, as after an idle spell. Those from before take their room with them
when they complete, and only replies to requests sent since widen it. What was stored meanwhile
goes out as the workers answer, not in one burst: requests forwarded and not yet answered are
the ones a dispatcher dying now would leave to run again once their lease runs out (their
replies would find no one to take them), so after an outage, when another is likeliest, there
are few of them.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A service's window before anything came back from it: small, so that a slow service does
#: not get a burst that waits out its timeout in the broker's queue (one worker at 40 ms a
#: request and a 1 s timeout: 32 at once had 15 of 40 requests sent twice, 8 none); a fast one
#: reaches 128 after about 120 replies.
START = 8
#: After the dispatcher lost its broker: requests a window allows beyond those still in flight.
RESTART = 1
#: A reply slower than this share of the request timeout narrows the window.
LATE_SHARE = 0.25


@dataclass(slots=True)
class _Window:
    limit: float
    cut_at: float = float("-inf")  # when it was last halved
    restarted_at: float = float("-inf")  # when it last restarted (restart())


class Windows:
    """Each service's window: how many of its requests may be in flight now."""

    def __init__(self, cap: int, request_timeout: float) -> None:
        self.cap = cap
        self.late = request_timeout * LATE_SHARE
        self._start = float(min(START, cap))
        self._windows: dict[str, _Window] = {}

    def limit(self, service: str) -> int:
        """How many requests `service` may have in flight."""
        window = self._windows.get(service)
        return int(self._start if window is None else window.limit)

    def answered(self, service: str, sent: float, now: float) -> None:
        """A reply to a request sent at `sent` came back at `now` (monotonic seconds)."""
        if now - sent > self.late:
            self.failed(service, sent, now)
            return
        window = self._window(service)
        if sent < window.restarted_at:
            _release(window)
        else:
            window.limit = min(float(self.cap), window.limit + 1.0)

    def failed(self, service: str, sent: float, now: float) -> None:
        """A request sent at `sent` timed out (or came back late): halve the window, unless it
        was sent before the last cut, which already answered the same congestion."""
        window = self._window(service)
        if sent < window.restarted_at:
            _release(window)
            return
        if sent < window.cut_at:
            return
        window.limit = max(1.0, window.limit / 2)
        window.cut_at = now

    def restart(self, service: str, now: float, *, in_flight: int = 0,
                room: int = RESTART) -> None:
        """After an outage: `room` more than the `in_flight` requests sent before it (if the
        window was wider). Each of those takes its room with it when it completes, and neither
        widens nor cuts the window: only replies to requests sent from now on do."""
        window = self._window(service)
        window.limit = min(window.limit, float(in_flight + room))
        window.cut_at = window.restarted_at = now

    def services(self) -> list[str]:
        """The services heard from so far."""
        return list(self._windows)

    def _window(self, service: str) -> _Window:
        window = self._windows.get(service)
        if window is None:
            window = self._windows[service] = _Window(self._start)
        return window


def _release(window: _Window) -> None:
    """A request sent before the window's last restart completed: its room goes with it."""
    window.limit = max(1.0, window.limit - 1.0)
