"""The Freelance (10/FLP) client without I/O: which servers live, where each request goes, when
it goes again elsewhere, and when it has failed.

`FreelanceSession` takes what the socket read (`receive`), what it could not send
(`unreachable`) and the time (`tick`), and hands back the messages to send (`take_outbox`) and
the requests that ended (`take_completions`). It never touches a socket or reads a clock:
`FreelanceClient` and `AsyncFreelanceClient` (titanic.client.freelance) drive it.

Liveness: every server gets a PING each `ping_interval`; any message from it (a PONG, a reply)
keeps it alive for `liveness` intervals. A server the socket is not connected to refuses the
PING at once (`unreachable`), costs nothing, and is probed again every `probe_interval`, so a
server that comes up is found within milliseconds. A request goes to the next live server in
turn, preferring one it has not tried; when that server is taken for dead, or says 404, or has
not answered in `attempt_timeout`, it goes to another live one; after the caller's timeout it
fails with FreelanceTimeoutError. Delivery is at least once: a request may run at two servers.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from titanic.errors import FreelanceTimeoutError, ProtocolError, ServiceRefusedError
from titanic.protocol import flp
from titanic.protocol.flp import Frames
from titanic.settings import (
    FREELANCE_ATTEMPT_TIMEOUT_S,
    FREELANCE_LIVENESS,
    FREELANCE_PING_INTERVAL_S,
    FREELANCE_PROBE_INTERVAL_S,
)


class Completion(NamedTuple):
    """A finished freelance request: the reply body, or the error that ended it; `server` is
    the endpoint that answered (None when none did)."""

    tag: Hashable
    reply: Frames | None
    error: Exception | None
    server: str | None = None


@dataclass
class _Server:
    """What the session knows of one server."""

    endpoint: str
    identity: bytes
    alive_until: float = 0.0  # alive while now < alive_until
    next_ping: float = 0.0
    probe_wait: float = 0.0  # the wait before the next PING while not connected


@dataclass
class _Pending:
    """A request not yet answered."""

    service: bytes
    body: Frames
    tag: Hashable
    deadline: float
    server: _Server | None = None  # where its current attempt went (None: waiting for one)
    attempt_deadline: float = 0.0
    attempts: int = 0
    tried: set[bytes] = field(default_factory=set)
    refusals: dict[bytes, flp.Reply] = field(default_factory=dict)


class FreelanceSession:
    """Freelance requests to several servers, with liveness and failover, without I/O."""

    def __init__(self, endpoints: Sequence[str], now: float, *,
                 ping_interval: float = FREELANCE_PING_INTERVAL_S,
                 liveness: int = FREELANCE_LIVENESS,
                 attempt_timeout: float = FREELANCE_ATTEMPT_TIMEOUT_S,
                 probe_interval: float = FREELANCE_PROBE_INTERVAL_S) -> None:
        if not endpoints:
            raise ValueError("a freelance client needs at least one server endpoint")
        self.ping_interval = ping_interval
        self.liveness = liveness
        self.attempt_timeout = attempt_timeout
        self.probe_interval = probe_interval
        self.servers = {endpoint.encode(): _Server(endpoint, endpoint.encode(), next_ping=now,
                                                   probe_wait=probe_interval)
                        for endpoint in endpoints}
        self._order = list(self.servers.values())
        #: Until then, a 404 waits for servers not heard from yet (see _refusal_final).
        self._grace_until = now + liveness * ping_interval
        self._turn = 0
        self._sequence = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._outbox: list[tuple[bytes, Frames]] = []
        self._done: list[Completion] = []
        #: Messages dropped: malformed, or from a peer that is not one of the servers.
        self.dropped = 0
        #: Replies to no pending request: answered elsewhere already, cancelled or given up.
        self.stale_replies = 0
        #: Requests sent again to another server.
        self.resent = 0

    # -- what the caller asks ---------------------------------------------------------------

    def request(self, service: bytes, body: Sequence[bytes], timeout: float, now: float,
                tag: Hashable = None) -> int:
        """Start a request; its sequence number. It goes out at once if a server lives."""
        sequence = next(self._sequence)
        pending = _Pending(service, list(body), tag, now + timeout)
        self._pending[sequence] = pending
        self._dispatch(sequence, pending, now)
        return sequence

    def cancel(self, sequence: int) -> None:
        """Forget a request: a reply that still comes is stale."""
        self._pending.pop(sequence, None)

    @property
    def in_flight(self) -> int:
        """Requests started and not yet completed."""
        return len(self._pending)

    def alive(self, now: float) -> list[str]:
        """The endpoints of the servers taken for alive now."""
        return [server.endpoint for server in self._order if server.alive_until > now]

    def take_outbox(self) -> list[tuple[bytes, Frames]]:
        """The messages to send now: (server identity, frames)."""
        out, self._outbox = self._outbox, []
        return out

    def take_completions(self) -> list[Completion]:
        """The requests that ended since the last call."""
        done, self._done = self._done, []
        return done

    def next_deadline(self) -> float:
        """When `tick` has something to do next."""
        times = [server.next_ping for server in self._order]
        for pending in self._pending.values():
            times.append(pending.deadline)
            if pending.server is not None:
                times.append(min(pending.attempt_deadline, pending.server.alive_until))
            elif pending.refusals:
                times.append(self._grace_until)
        return min(times)

    # -- what the driver reports ------------------------------------------------------------

    def receive(self, identity: bytes, frames: Frames, now: float) -> None:
        """A message from a server (its routing frame taken off)."""
        server = self.servers.get(identity)
        if server is None:
            self.dropped += 1
            return
        was_alive = server.alive_until > now
        server.probe_wait = self.probe_interval
        server.alive_until = now + self.liveness * self.ping_interval
        if not flp.is_pong(frames):
            self._take_reply(server, frames, now)
        if not was_alive:
            self._dispatch_waiting(now)

    def unreachable(self, identity: bytes, frames: Frames, now: float) -> None:
        """The socket refused to send `frames` to this server: it is not connected."""
        server = self.servers.get(identity)
        if server is None:
            return
        server.alive_until = min(server.alive_until, now)
        if flp.is_ping(frames):  # probed again soon, less and less often while it stays away
            server.next_ping = now + server.probe_wait
            server.probe_wait = min(server.probe_wait * 2, self.ping_interval)
        else:
            self._reroute_from(server, now)

    def tick(self, now: float) -> None:
        """Send the PINGs due, take dead servers out, retry and expire requests."""
        for server in self._order:
            if now >= server.next_ping:
                self._outbox.append((server.identity, [flp.PING]))
                server.next_ping = now + self.ping_interval
        for sequence, pending in list(self._pending.items()):
            if now >= pending.deadline:
                del self._pending[sequence]
                self._done.append(Completion(pending.tag, None, self._timeout(pending, now)))
            elif pending.server is None:
                if (not self._dispatch(sequence, pending, now) and pending.refusals
                        and self._refusal_final(pending, now)):
                    del self._pending[sequence]
                    identity, reply = next(reversed(pending.refusals.items()))
                    self._done.append(self._refused(pending, identity.decode(), reply))
            elif (now >= pending.attempt_deadline
                  or pending.server.alive_until <= now):
                self._dispatch(sequence, pending, now, resend=True)

    # -- inside ---------------------------------------------------------------------------------

    def _take_reply(self, server: _Server, frames: Frames, now: float) -> None:
        try:
            reply = flp.parse_reply(frames)
        except ProtocolError:
            self.dropped += 1
            return
        pending = self._pending.get(reply.sequence)
        if pending is None or (pending.server is not server
                               and server.identity not in pending.tried):
            self.stale_replies += 1
            return
        if reply.status == flp.UNKNOWN_SERVICE:
            pending.refusals[server.identity] = reply
            if self._dispatch(reply.sequence, pending, now, resend=True):
                return  # another live server may serve it
            if not self._refusal_final(pending, now):
                return  # a server not heard from yet may: it waits for one (see tick)
        del self._pending[reply.sequence]
        if reply.ok:
            self._done.append(Completion(pending.tag, reply.body, None, server.endpoint))
        else:
            self._done.append(self._refused(pending, server.endpoint, reply))

    def _refusal_final(self, pending: _Pending, now: float) -> bool:
        """Whether a request no live server takes is refused for good: every server said 404,
        or the first liveness window is over, in which every server had its chance to be
        heard (a client's servers answer their first PING at different times)."""
        return len(pending.refusals) == len(self._order) or now >= self._grace_until

    @staticmethod
    def _refused(pending: _Pending, endpoint: str, reply: flp.Reply) -> Completion:
        error = ServiceRefusedError(int(reply.status), reply.reason,
                                    pending.service.decode("utf-8", "replace"))
        return Completion(pending.tag, None, error, endpoint)

    def _choose(self, pending: _Pending, now: float) -> _Server | None:
        """The next live server in turn that has not refused this request, preferring one
        not tried yet; None if none lives."""
        alive = [server for server in self._order if server.alive_until > now
                 and server.identity not in pending.refusals]
        if not alive:
            return None
        fresh = [server for server in alive if server.identity not in pending.tried]
        candidates = fresh or alive
        self._turn += 1
        return candidates[self._turn % len(candidates)]

    def _dispatch(self, sequence: int, pending: _Pending, now: float, *,
                  resend: bool = False) -> bool:
        """Send the request to a live server; False if none can take it now (it waits)."""
        server = self._choose(pending, now)
        if server is None:
            pending.server = None
            return False
        if resend and pending.server is not None:
            self.resent += 1
        pending.server = server
        pending.tried.add(server.identity)
        # Each attempt waits twice as long as the one before: a slow handler at the only live
        # server is not sent the same request again and again.
        pending.attempt_deadline = now + self.attempt_timeout * 2 ** min(pending.attempts, 6)
        pending.attempts += 1
        self._outbox.append((server.identity, flp.build_request(sequence, pending.service,
                                                               pending.body)))
        return True

    def _dispatch_waiting(self, now: float) -> None:
        for sequence, pending in self._pending.items():
            if pending.server is None:
                self._dispatch(sequence, pending, now)

    def _reroute_from(self, server: _Server, now: float) -> None:
        for sequence, pending in self._pending.items():
            if pending.server is server:
                self._dispatch(sequence, pending, now, resend=True)

    def _timeout(self, pending: _Pending, now: float) -> FreelanceTimeoutError:
        service = pending.service.decode("utf-8", "replace")
        tried = _names(server.decode() for server in pending.tried)
        alive = self.alive(now)
        if pending.refusals:
            why = f"refused by {_names(s.decode() for s in pending.refusals)} (404)"
            return FreelanceTimeoutError(f"no reply for {service!r}: {why}, and no other "
                                         "server answered")
        if not tried:
            return FreelanceTimeoutError(
                f"no reply for {service!r}: no server answered a PING "
                f"({_names(server.endpoint for server in self._order)})")
        return FreelanceTimeoutError(
            f"no reply for {service!r} from {tried}; alive now: {_names(alive) or 'none'}")


def _names(endpoints: Iterable[str]) -> str:
    return ", ".join(endpoints)
