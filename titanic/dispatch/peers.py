"""Sites joined by links: what a site knows of its peers and of the requests it sent them,
without a socket or a clock (titanic.dispatch.peer_link drives it).

A peer is another site's brokers. Its link is up while its answers to titanic.peer come, and
down after `misses_down` asks in a row went unanswered; either way since when is kept. A
forward is a stored request of ours sent to a peer as a keyed titanic.request (the key is our
UUID, so that sending it again after a broken link stores it once there): first its
acknowledgement is awaited, then its reply is asked for, with the others due at the same peer
in one titanic.replies call, until it is stored here and the far copy closed. The first ask
goes `first_ask` after the acknowledgement: an estimate of how long requests there take, kept
where about two thirds of first asks find their request finished (a quantile tracked by
stochastic approximation, once per titanic.replies answer: down a step times the share of its
first asks that found their request finished, up two steps times the share found pending); a
request still pending is asked about again after a quarter of
that (at least POLL_FIRST_S), then twice as long each time, up to POLL_MAX_S.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from titanic.protocol.peer import SiteState

#: Asks in a row without an answer after which a link is down.
MISSES_DOWN = 3
#: The shortest and longest wait before asking again about a forward still pending there.
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.5
#: The longest a first ask is put off after the acknowledgement, in seconds.
FIRST_WAIT_MAX_S = 0.5
#: The share of first asks that should find their request finished.
_FOUND_SHARE = 2 / 3
_MINUTE_S = 60.0


@dataclass
class Peer:
    """One peer: where it is, what it said last, its link, and what went to it."""

    name: str
    endpoint: str
    state: SiteState | None = None
    up: bool = False
    #: Wall-clock time (seconds since the epoch) of the link's last change; 0 never.
    since: float = 0.0
    misses: int = 0
    asking: bool = False
    forwarded_total: int = 0
    answered_total: int = 0
    forwarded_times: collections.deque[float] = field(default_factory=collections.deque)
    answered_times: collections.deque[float] = field(default_factory=collections.deque)
    def serves(self, service: str) -> bool:
        """The link is up and the peer has a live worker of `service`."""
        return self.up and self.state is not None and self.state.serves(service)


@dataclass
class Forward:
    """A request of ours at a peer: its far UUID once acknowledged, and when to ask for its
    reply next."""

    peer: str
    service: str
    sent_at: float
    lease_until: float
    far_id: str | None = None
    acknowledged_at: float = 0.0
    first_ask: bool = True
    next_poll: float = 0.0
    poll_wait: float = POLL_FIRST_S
    polling: bool = False


def _trim(times: collections.deque[float], now: float) -> int:
    while times and times[0] <= now - _MINUTE_S:
        times.popleft()
    return len(times)


class PeerBook:
    """The peers and the forwards of one site; times are the caller's monotonic clock, except
    the links' `since` (wall clock, for people)."""

    def __init__(self, peers: Iterable[tuple[str, str]], *, window: int = 256) -> None:
        self.peers = {name: Peer(name, endpoint) for name, endpoint in peers}
        self.forwards: dict[str, Forward] = {}
        #: The most forwards one peer may have unanswered at once.
        self.window = window
        #: Sites that asked us lately: their states, by name.
        self.heard: dict[str, tuple[SiteState, float]] = {}
        self._counts: collections.Counter[str] = collections.Counter()  # forwards per peer
        # (when, sequence, request id): the waits to send, earliest first; stale ones skipped.
        self._polls: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        #: How long after its acknowledgement a forward's reply is first asked for (see above).
        self.first_ask = 0.02

    # -- links ----------------------------------------------------------------------------------

    def answered(self, name: str, state: SiteState, wall: float) -> bool:
        """The peer answered an ask; True if its link came up."""
        peer = self.peers[name]
        peer.state, peer.misses, peer.asking = state, 0, False
        if peer.up:
            return False
        peer.up, peer.since = True, wall
        return True

    def missed(self, name: str, wall: float) -> bool:
        """An ask went unanswered; True if the link went down."""
        peer = self.peers[name]
        peer.misses += 1
        peer.asking = False
        if peer.up and peer.misses >= MISSES_DOWN:
            peer.up, peer.since = False, wall
            return True
        if not peer.up and peer.since == 0.0:
            peer.since = wall  # down from the start: since when we first tried
        return False

    def heard_from(self, state: SiteState, now: float) -> None:
        """A site asked us, telling its state."""
        self.heard[state.site] = (state, now)

    # -- where a request goes -------------------------------------------------------------------

    def unanswered(self, name: str) -> int:
        """Forwards to the peer that await their reply."""
        return self._counts[name]

    def choose(self, service: str, in_flight: Mapping[str, int] | None = None) -> Peer | None:
        """The up peer serving `service` with room for another forward, the one with the most
        free workers for it (live workers less requests waiting there and ours in flight)."""
        counts = in_flight if in_flight is not None else self._in_flight()
        best: tuple[int, str] | None = None
        for peer in self.peers.values():
            if not peer.serves(service) or counts.get(peer.name, 0) >= self.window:
                continue
            assert peer.state is not None
            workers, queued = peer.state.services[service]
            free = workers - queued - counts.get(peer.name, 0)
            if best is None or free > best[0]:
                best = (free, peer.name)
        return None if best is None else self.peers[best[1]]

    def _in_flight(self) -> dict[str, int]:
        return dict(self._counts)

    def _add(self, request_id: str, forward: Forward) -> None:
        self._forget(request_id)
        self.forwards[request_id] = forward
        self._counts[forward.peer] += 1

    def _forget(self, request_id: str) -> Forward | None:
        forward = self.forwards.pop(request_id, None)
        if forward is not None:
            self._counts[forward.peer] -= 1
        return forward

    def _schedule(self, request_id: str, forward: Forward, when: float) -> None:
        forward.next_poll = when
        heapq.heappush(self._polls, (when, next(self._sequence), request_id))

    def routes(self) -> set[str]:
        """Services some up peer serves."""
        return {service for peer in self.peers.values() if peer.up and peer.state is not None
                for service, (workers, _) in peer.state.services.items() if workers > 0}

    # -- forwards -------------------------------------------------------------------------------

    def claimed(self, request_id: str, service: str, peer: Peer, now: float,
                lease: float) -> bool:
        """A request was claimed for `peer`; True if it must be sent (it is not at that peer
        already: a claim again after its lease ran out only renews it)."""
        known = self.forwards.get(request_id)
        if known is not None and known.peer == peer.name and known.far_id is not None:
            known.lease_until = now + lease
            return False
        self._add(request_id, Forward(peer.name, service, now, now + lease))
        return True

    def adopt(self, request_id: str, peer: str, far_id: str, now: float, lease: float) -> None:
        """A request sent to `peer` as `far_id` before this book was made: ask for its reply
        at once."""
        forward = Forward(peer, "", now, now + lease, far_id, now, first_ask=False)
        self._add(request_id, forward)
        self._schedule(request_id, forward, now)

    def acknowledged(self, request_id: str, far_id: str, now: float) -> None:
        """The peer stored it as `far_id`."""
        forward = self.forwards.get(request_id)
        if forward is None:
            return
        if forward.far_id is None:
            peer = self.peers[forward.peer]
            peer.forwarded_total += 1
            peer.forwarded_times.append(now)
        forward.far_id, forward.acknowledged_at = far_id, now
        forward.poll_wait = max(POLL_FIRST_S, self.first_ask / 4)
        self._schedule(request_id, forward, now + self.first_ask)

    def dropped(self, request_id: str) -> Forward | None:
        """Forget a forward (its send failed, its reply is stored, or it went elsewhere)."""
        return self._forget(request_id)

    def replied(self, request_id: str, now: float) -> Forward | None:
        """Its reply came and is stored: forget it, count it."""
        forward = self._forget(request_id)
        if forward is not None:
            peer = self.peers[forward.peer]
            peer.answered_total += 1
            peer.answered_times.append(now)
        return forward

    def learn(self, first: Mapping[str, bool]) -> None:
        """What the first asks in one answer found (finished or not, by request): `first_ask`
        moves towards its quantile by one step at most."""
        asked = [request_id for request_id in first
                 if (forward := self.forwards.get(request_id)) is not None and forward.first_ask]
        if not asked:
            return
        for request_id in asked:
            self.forwards[request_id].first_ask = False
        found = sum(1 for request_id in asked if first[request_id]) / len(asked)
        step = max(0.001, self.first_ask / 10)
        self.first_ask += step * ((1 - found) * _FOUND_SHARE - found * (1 - _FOUND_SHARE))
        self.first_ask = min(FIRST_WAIT_MAX_S, max(0.0, self.first_ask))

    def still_pending(self, request_id: str, now: float) -> None:
        """Its peer said it is pending, or did not answer: ask again later, less often each
        time in a row."""
        forward = self.forwards.get(request_id)
        if forward is None:
            return
        forward.polling = False
        self._schedule(request_id, forward, now + forward.poll_wait)
        forward.poll_wait = min(POLL_MAX_S, forward.poll_wait * 2)

    def polls_due(self, now: float, room: Mapping[str, int]) -> list[tuple[str, Forward]]:
        """Acknowledged forwards whose ask is due, up to `room[peer]` for each peer; those to a
        down peer are put off (asked when it is up again)."""
        due: list[tuple[str, Forward]] = []
        left = dict(room)
        later: list[tuple[str, Forward, float]] = []
        while self._polls and self._polls[0][0] <= now:
            when, _, request_id = heapq.heappop(self._polls)
            forward = self.forwards.get(request_id)
            if (forward is None or forward.far_id is None or forward.polling
                    or forward.next_poll != when):
                continue  # stale
            if not self.peers[forward.peer].up or left.get(forward.peer, 0) <= 0:
                later.append((request_id, forward, now + (
                    POLL_MAX_S if not self.peers[forward.peer].up else POLL_FIRST_S)))
                continue
            left[forward.peer] -= 1
            forward.polling = True
            due.append((request_id, forward))
        for request_id, forward, when in later:
            self._schedule(request_id, forward, when)
        return due

    def next_poll(self) -> float | None:
        """When the earliest ask is due (None: none is)."""
        while self._polls:
            when, _, request_id = self._polls[0]
            forward = self.forwards.get(request_id)
            if forward is not None and not forward.polling and forward.next_poll == when:
                return when
            heapq.heappop(self._polls)
        return None

    def lapsed(self, now: float) -> list[str]:
        """Forwards to a down peer whose claim's lease ran out: the store has taken them back
        (they may go elsewhere now), so they are forgotten here; a claim for the same peer
        later sends again with the same key, which that peer stores once."""
        gone = [request_id for request_id, forward in self.forwards.items()
                if forward.lease_until <= now and not self.peers[forward.peer].up]
        for request_id in gone:
            self._forget(request_id)
        return gone

    # -- what an operator sees ------------------------------------------------------------------

    def describe(self, now: float,
                 waiting: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        """Each peer: its endpoint, link up or down and since when, its services, requests
        waiting for it (`waiting`, by service, of the services it serves) and awaiting its
        reply, forwarded and answered in the last minute and in all."""
        counts = self._in_flight()
        described = []
        for peer in self.peers.values():
            services = peer.state.services if peer.state is not None else {}
            described.append({
                "name": peer.name, "endpoint": peer.endpoint, "up": peer.up,
                "since": peer.since or None,
                "store": peer.state.store if peer.state is not None else None,
                "services": {name: {"workers": workers, "queued": queued}
                             for name, (workers, queued) in sorted(services.items())},
                "waiting": sum((waiting or {}).get(name, 0) for name, (workers, _)
                               in services.items() if workers > 0),
                "in_flight": counts.get(peer.name, 0),
                "forwarded_per_minute": _trim(peer.forwarded_times, now),
                "answered_per_minute": _trim(peer.answered_times, now),
                "forwarded": peer.forwarded_total, "answered": peer.answered_total,
            })
        return described
