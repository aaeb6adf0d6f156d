"""What the broker core keeps per service and per worker: the queue, the idle and busy workers,
and each worker's credit (how many requests it may hold at once, from how quick it has been)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import NamedTuple

from titanic.protocol.mdp import Dialect, Frames
from titanic.settings import QUEUED_REQUEST_COST, BrokerSettings

#: A request in a worker's hands: (client identity, client dialect, when it was sent, whom the
#: per-client limit counts it against, the client's CURVE key or None).
Assignment = tuple[bytes, Dialect, float, bytes, "bytes | None"]


class QueuedRequest(NamedTuple):
    """A request waiting in a service's queue for a worker."""

    client: bytes
    dialect: Dialect
    body: Frames
    expires_at: float
    #: Whom the per-client limit counts it against: the CURVE key, else the connection.
    counted: bytes
    #: The client's CURVE key (Z85), None without CURVE.
    user: bytes | None
    #: What it counts against its client's limit, in bytes (`queued_cost`).
    cost: int


def queued_cost(service: bytes, body: Frames) -> int:
    """What a queued request counts against its client's limit: its service name and body,
    and QUEUED_REQUEST_COST for its place in the queue."""
    return QUEUED_REQUEST_COST + len(service) + sum(map(len, body))


class QueueBook:
    """The broker's queued requests and their counts: how many wait in all, and how many
    bytes each client (its CURVE key, else its connection) has waiting. Every request enters
    and leaves a service's queue through here, and `audit()` checks the counts against the
    queues."""

    __slots__ = ("by_client", "total")

    def __init__(self) -> None:
        self.total = 0
        self.by_client: dict[bytes, int] = {}

    def waiting(self, counted: bytes) -> int:
        """Bytes the client has waiting (queued_cost of each request)."""
        return self.by_client.get(counted, 0)

    def push(self, service: ServiceQueue, queued: QueuedRequest, *, front: bool = False
             ) -> None:
        """Queue a request at the back (or, sent back undelivered, the front) of its queue."""
        if front:
            service.requests.appendleft(queued)
        else:
            service.requests.append(queued)
        self.total += 1
        self.by_client[queued.counted] = self.by_client.get(queued.counted, 0) + queued.cost

    def pop(self, service: ServiceQueue) -> QueuedRequest:
        """Take the request at the front of a service's queue."""
        queued = service.requests.popleft()
        self._forget(queued)
        return queued

    def remove(self, service: ServiceQueue, queued: QueuedRequest) -> None:
        """Take a request out of the middle of its queue."""
        service.requests.remove(queued)
        self._forget(queued)

    def _forget(self, queued: QueuedRequest) -> None:
        self.total -= 1
        left = self.by_client[queued.counted] - queued.cost
        if left:
            self.by_client[queued.counted] = left
        else:
            del self.by_client[queued.counted]

    def audit(self, services: Iterable[ServiceQueue]) -> None:
        """AssertionError unless the counts are those of the queues."""
        total, by_client = 0, Counter[bytes]()
        for service in services:
            for queued in service.requests:
                total += 1
                by_client[queued.counted] += queued.cost
        if (total, dict(by_client)) != (self.total, self.by_client):
            raise AssertionError(f"queue counts {self.total}, {self.by_client} are not those of "
                                 f"the queues: {total}, {dict(by_client)}")


class ServiceQueue:
    """A service: its queue of requests and its workers, idle and with credit left."""

    __slots__ = ("idle", "name", "requests", "spare", "workers")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.requests: deque[QueuedRequest] = deque()
        # No request in hand, least recently used first:
        self.idle: dict[bytes, RegisteredWorker] = {}
        self.spare: dict[bytes, RegisteredWorker] = {}  # busy, but with prefetch credit left
        self.workers = 0

    def take_worker(self) -> RegisteredWorker | None:
        """The least recently used idle worker, else a busy one with credit left."""
        pool = self.idle or self.spare
        if not pool:
            return None
        return pool.pop(next(iter(pool)))


class RegisteredWorker:
    """A worker registered for a service: what it holds, and how much more it may hold."""

    __slots__ = (
        "credit",
        "dialect",
        "identities",
        "identity",
        "last_reply",
        "last_seen",
        "outstanding",
        "partials",
        "per_request",
        "probed_at",
        "service",
    )

    def __init__(self, identity: bytes, service: ServiceQueue, dialect: Dialect,
                 now: float, identities: bool = False) -> None:
        self.identity = identity
        self.service = service
        self.dialect = dialect
        self.identities = identities  # its REQUESTs carry the caller frame
        self.last_seen = now
        self.probed_at = now  # when a heartbeat last checked that it is still connected
        # Requests sent and not yet answered, oldest first. A worker answers them in order, one
        # at a time; with credit > 1 the next ones wait in the worker's socket instead of the
        # broker's queue, saving a round trip per request.
        self.outstanding: deque[Assignment] = deque()
        self.partials: Frames = []
        self.credit = 1  # requests it may hold; grows once it has shown to be quick
        self.per_request: float | None = None  # moving average of its time per request, s
        self.last_reply = now

    def measure(self, sent_at: float, now: float, settings: BrokerSettings) -> None:
        """A reply came: update the time per request and, from it, the credit.

        The worker started on this request when it was sent or when it answered the previous
        one, whichever was later. Credit lets the requests queued at a worker wait about
        `prefetch_wait` at most: one at a time for slow work, up to `worker_prefetch` for quick.
        """
        took = now - max(sent_at, self.last_reply)
        self.last_reply = now
        average = self.per_request
        average = took if average is None else average + 0.2 * (took - average)
        self.per_request = average
        wait, ceiling = settings.prefetch_wait, settings.worker_prefetch
        if wait <= 0:
            self.credit = 1
        elif average <= 0:  # answered within the same batch of messages: quicker than we see
            self.credit = ceiling
        else:
            self.credit = max(1, min(ceiling, 1 + int(wait / average)))
