"""How a dispatcher behaves (DispatcherSettings) and what it counts (DispatcherStats).

Apart from titanic.dispatch.standalone, which owns the sockets and the loop, so that the
planner, which decides each turn, can read both without importing the dispatcher.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from titanic.logs import counters_text
from titanic.protocol.mdp import Dialect
from titanic.settings import DEFAULT_BROKER
from titanic.worker.connection import ConnectionSettings

DAY_S = 24 * 3600.0


@dataclass(frozen=True)
class DispatcherSettings:
    """How the dispatcher behaves; every time is in seconds."""

    #: One broker, or several (a sequence, or one comma-separated string).
    broker: str | Sequence[str] = DEFAULT_BROKER
    #: The brokers' worker endpoints, when they have separate ones (`titanic broker
    #: --worker-bind`): the TSP services register there; requests are forwarded through `broker`.
    worker_broker: str | Sequence[str] | None = None
    #: The MDP dialect of the dispatcher's TSP workers, and of its forwards (which take 7/MDP's
    #: as 18/MDP's: a 7/MDP client cannot hear a reply's PARTIALs, which are stored as they
    #: come, unless `stream_replies` is off).
    dialect: Dialect = Dialect.MDP01
    #: Forward as an 18/MDP client, so that each PARTIAL of a streamed reply is stored as it
    #: comes (with 7/MDP the broker joins them into one reply).
    stream_replies: bool = True
    #: How long a forwarded request may take before it counts as failed and is retried.
    request_timeout: float = 10.0
    max_attempts: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    #: Forwarded requests in flight at once, all services together (one socket each, opened
    #: when first needed).
    max_in_flight: int = 256
    #: The most one service may have in flight: its window (titanic.dispatch.in_flight) starts
    #: at 8 and adapts to how quickly it answers, within this cap.
    max_in_flight_per_service: int = 128
    #: Extra lease time beyond request_timeout, so a live dispatcher's lease never runs out first.
    lease_margin: float = 5.0
    #: How often to ask mmi.service again about a service that had no workers.
    presence_interval: float = 1.0
    #: How long a positive mmi.service answer is trusted.
    presence_ttl: float = 5.0
    #: How often expired leases are released (crash recovery).
    release_interval: float = 2.0
    #: How often undeliverable requests are expired and old ones purged.
    cleanup_interval: float = 60.0
    #: A request not delivered within this time after it was submitted expires.
    pending_ttl: float = DAY_S
    #: A finished request (and its reply) is deleted this long after it finished.
    reply_ttl: float = 7 * DAY_S
    request_connections: int = 16
    reply_connections: int = 2
    close_connections: int = 1
    #: titanic.wait connections: each holds one wait at a time (titanic.dispatch.held_waits).
    wait_connections: int = 16
    #: How long a reply may wait to be stored with the next turn that commits anyway (new
    #: requests or claims) instead of in a transaction of its own; 0: store every reply at once.
    #: A titanic.reply or titanic.close stores the replies held before it is served, so a
    #: client asking for a result never waits for this.
    reply_linger: float = 0.002
    #: Requests arriving one at a time, back to back (each within this time of the one before:
    #: a synchronous submitter): what such a request's turn claimed is sent at the start of the
    #: next turn that stores a submission, so that it crosses the broker while that commit waits
    #: for its fsync rather than beside the answer on its way back, or once twice the time
    #: since the one before has passed, or a titanic.reply or titanic.close comes (a client
    #: waiting for a result: the next request then does not count as back to back); and its
    #: turn leaves the replies held back (reply_linger) for a commit off the submitter's path.
    #: 0: everything sent at once.
    forward_linger: float = 0.005
    #: On SIGTERM, how long to wait for replies to requests in flight before releasing them.
    drain_timeout: float = 5.0
    #: At start-up, how long to wait for each broker to say which store serves it.
    identity_timeout: float = 2.0
    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    #: Ask the broker who sends each TSP request (needs CURVE, and our key in the broker's
    #: admin folder): requests then belong to the key that submitted them.
    identities: bool = False
    #: Unfinished (pending or dispatched) requests one key may have stored; beyond, titanic.request
    #: is answered 503. 0: no limit. Only callers the broker names are counted.
    max_stored_per_key: int = 0
    #: This site's name, as its peers know it (titanic.dispatch.peer_link).
    site: str = field(default_factory=socket.gethostname)
    #: Other sites' brokers, (name, endpoint): requests for services without a live worker
    #: here go to one that serves them.
    peers: tuple[tuple[str, str], ...] = ()
    #: A request sent to a peer stays ours this long; a peer lost for longer has it taken
    #: back, to go elsewhere.
    peer_lease: float = 60.0
    #: Requests of a service with workers here that waited this long go to a peer with free
    #: workers for it too.
    peer_overflow_after: float = 5.0
    #: How often each peer is asked titanic.peer; a link is down after three asks unanswered.
    peer_interval: float = 1.0
    #: How often requests for peers are claimed.
    peer_turn: float = 0.02
    #: How long a call to a peer (a request, a poll, a close) may take.
    peer_timeout: float = 3.0
    #: Requests one peer may have unanswered at once.
    peer_max_in_flight: int = 1024
    #: Calls (requests, waits) in flight to one peer at once: one socket each.
    peer_sockets: int = 256

    @property
    def lease(self) -> float:
        """Seconds a claimed request stays ours."""
        return self.request_timeout + self.lease_margin


@dataclass
class DispatcherStats:
    """What the forwarder did."""

    dispatched: int = 0
    completed: int = 0
    #: Replies not stored: their request no longer waited for one (cancelled, closed, or
    #: already finished).
    discarded: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    expired: int = 0
    purged: int = 0
    store_errors: int = 0
    #: titanic.requests refused with 503 for their key's max_stored_per_key.
    over_key_limit: int = 0
    #: Requests whose forwarding waited for the next submission (forward_linger).
    forwards_kept: int = 0

    def __str__(self) -> str:
        """The counters in words, for a log line: `dispatched 12, completed 12`."""
        return counters_text(self)
