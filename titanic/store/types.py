"""The store's vocabulary: request states, the frozen records it returns, and its interface."""

from __future__ import annotations

import enum
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from titanic.errors import InvalidRequestError
from titanic.protocol.tsp import canonical_uuid


class RequestStatus(enum.StrEnum):
    """Where a stored request is in its life."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"
    #: Cancelled by a client: never sent if it was waiting, its reply discarded if not.
    CANCELLED = "cancelled"


#: States in which a request is finished: its reply (if any) is final.
FINISHED = (RequestStatus.DONE, RequestStatus.FAILED, RequestStatus.EXPIRED,
            RequestStatus.CANCELLED)

#: The state shown for a pending request not tried yet whose time (`not_before`) is still to
#: come: stored as pending, due later (see `shown_state`).
SCHEDULED = "scheduled"
#: Priorities a request may have: higher ones are claimed first within their service.
PRIORITY_MIN = -1_000_000
PRIORITY_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """A request as stored, with its reply once done."""

    id: str
    service: str
    request: tuple[bytes, ...]
    reply: tuple[bytes, ...] | None
    status: RequestStatus
    attempts: int
    created_at: datetime
    due_at: datetime
    lease_until: datetime | None
    completed_at: datetime | None
    last_error: str | None
    deadline: datetime | None
    idempotency_key: str | None
    #: The CURVE key (Z85) that submitted it; None when the broker told no caller.
    owner: str | None = None
    #: Higher first within its service (then the oldest due).
    priority: int = 0


def shown_state(request: StoredRequest, now: datetime) -> str:
    """The state a person is shown: the stored status, or `scheduled` for a pending request
    never tried whose due time (its `not_before`) is after `now` (aware UTC)."""
    if (request.status is RequestStatus.PENDING and request.attempts == 0
            and request.due_at > now):
        return SCHEDULED
    return request.status.value


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request to store; `owner` is the submitter's CURVE key (Z85), if known; it is sent no
    earlier than `not_before` (aware, or naive UTC), and before the requests of its service
    with a lower `priority`."""

    service: str
    frames: tuple[bytes, ...]
    deadline: datetime | None = None
    idempotency_key: str | None = None
    owner: str | None = None
    not_before: datetime | None = None
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Delivery:
    """A request claimed for sending: what the dispatcher needs of it."""

    id: str
    service: str
    request: tuple[bytes, ...]
    attempts: int
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Exchange:
    """What one `Store.exchange` did: the new requests' UUIDs (in order), how many replies it
    stored, and the requests it claimed; `waits`: per service whose rate limit held back a
    claim, the seconds until it may claim again."""

    ids: list[str]
    completed: int
    claimed: list[Delivery]
    waits: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceLimit:
    """A service's limits, shared by every dispatcher of the store: at most `max_in_flight`
    requests dispatched at once (None: no limit), and claims paced by a token bucket of
    `rate` tokens a second (None: no limit) holding at most `burst`; `tokens` as of
    `refilled_at` (aware UTC)."""

    service: str
    max_in_flight: int | None
    rate: float | None
    burst: float
    tokens: float
    refilled_at: datetime

    def allowance(self, room: int, in_flight: int, now: datetime) -> tuple[int, float]:
        """How many of `room` a claim at `now` may take, with `in_flight` of the service
        dispatched already; and the tokens there are then (before the claim spends its own)."""
        allowed = room
        if self.max_in_flight is not None:
            allowed = min(allowed, self.max_in_flight - in_flight)
        tokens = self.tokens
        if self.rate is not None:
            elapsed = max(0.0, (now - self.refilled_at).total_seconds())
            tokens = min(self.burst, tokens + self.rate * elapsed)
            allowed = min(allowed, math.floor(tokens + 1e-9))
        return max(0, allowed), tokens

    def wait_after(self, tokens_left: float) -> float | None:
        """Seconds until the next whole token, with `tokens_left` after a claim (None without
        a rate)."""
        if self.rate is None:
            return None
        return max(0.0, (1.0 - tokens_left) / self.rate) if tokens_left < 1.0 else 0.0


def check_limit(max_in_flight: int | None, rate: float | None, burst: float | None) -> float:
    """The burst a limit takes (1 when not given: claims evenly paced); InvalidRequestError for
    values out of range."""
    if max_in_flight is not None and not 0 <= max_in_flight <= 1_000_000:
        raise InvalidRequestError("max in flight must be from 0 to 1000000")
    if rate is not None and not (0 < rate <= 1_000_000 and math.isfinite(rate)):
        raise InvalidRequestError("a rate must be more than 0 and at most 1000000 a second")
    if burst is not None and not (1 <= burst <= 1_000_000 and math.isfinite(burst)):
        raise InvalidRequestError("a burst must be from 1 to 1000000")
    if max_in_flight is None and rate is None:
        raise InvalidRequestError("a limit needs a max in flight, a rate, or both")
    return 1.0 if burst is None else float(burst)


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    """Which store this is: its identity (32 hex digits, kept in the database) and where it is
    (the URL without its password)."""

    id: str
    location: str

    def __str__(self) -> str:
        """For a log line: `668ac55a... at sqlite:////var/lib/titanic/t.db`."""
        return f"{self.id} at {self.location}"


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Request counts by (service, status)."""

    counts: dict[tuple[str, RequestStatus], int]

    def by_status(self) -> dict[RequestStatus, int]:
        """Counts by status, all services together."""
        totals: dict[RequestStatus, int] = {}
        for (_, status), count in self.counts.items():
            totals[status] = totals.get(status, 0) + count
        return totals


@dataclass(frozen=True, slots=True)
class ServiceSummary:
    """One service's stored requests: counts by state, when its oldest pending request (not
    scheduled) was submitted, how many completed (done) since the moment asked about, and how
    many of the pending ones are scheduled (see shown_state)."""

    service: str
    counts: dict[RequestStatus, int]
    oldest_pending: datetime | None
    completed_since: int
    scheduled: int = 0

    def shown_counts(self) -> dict[str, int]:
        """Counts by the state a person is shown: the scheduled apart from the pending."""
        shown = {state.value: self.counts.get(state, 0) for state in RequestStatus}
        shown[RequestStatus.PENDING.value] -= self.scheduled
        shown[SCHEDULED] = self.scheduled
        return shown


#: States a bulk retry takes requests from, and states a purge deletes.
REQUEUABLE = (RequestStatus.FAILED, RequestStatus.EXPIRED)


class Store(Protocol):
    """What titanic needs of a request store; SqlStore and testing.MemoryStore implement it."""

    #: The largest request body (all frames) the store takes, in bytes.
    max_request_bytes: int

    def submit(self, service: str, frames: Sequence[bytes], *, deadline: datetime | None = None,
               idempotency_key: str | None = None) -> str:
        """Store one request, committed before returning its UUID."""
        ...

    def submit_many(self, requests: Sequence[NewRequest]) -> list[str]:
        """Store a batch in one transaction; UUIDs in input order."""
        ...

    def get(self, request_id: str) -> StoredRequest | None:
        """The request, or None if unknown."""
        ...

    def claim_due(self, services: Sequence[str] | None, limit: int, lease: float, *,
                  now: datetime | None = None) -> list[StoredRequest]:
        """Lease up to `limit` due pending requests (highest priority, then oldest due, first;
        a limited service's within its limits): they become dispatched."""
        ...

    def exchange(self, new: Sequence[NewRequest],
                 replies: Sequence[tuple[str, Sequence[bytes]]], claims: Mapping[str, int],
                 lease: float, *, now: datetime | None = None,
                 claim_new: Mapping[str, int] | None = None,
                 parts: Sequence[tuple[str, int, Sequence[bytes]]] = (),
                 trims: Sequence[tuple[str, int]] = ()) -> Exchange:
        """In one transaction: store new requests, store the parts of streamed replies, store
        replies (as complete_many), then claim up to `claims[service]` due requests of each
        service (the new ones included).

        `parts` are (request id, part number from 1, frames), stored for requests that are
        dispatched (a part of the same number replaces the one stored, an earlier attempt's);
        `trims` are (request id, last part number): the parts after it are deleted (an
        earlier attempt's that ran longer).

        `claim_new[service]` of the new requests of that service (the first ones without an
        idempotency key, see `fresh_claims`) are stored claimed instead of pending, leased like
        a claim; they come first in `Exchange.claimed`. For a caller that knows nothing older is
        due there: the claim's query and update are saved.

        Durable when it stores new requests. The new requests must be valid (check_new_request):
        an invalid one raises InvalidRequestError and nothing is done.
        """
        ...

    def complete(self, request_id: str, reply: Sequence[bytes]) -> bool:
        """Store the reply: done. False if the request is unknown or already finished."""
        ...

    def parts_after(self, request_id: str, after: int) -> list[tuple[int, tuple[bytes, ...]]]:
        """The stored parts of a streamed reply numbered after `after`, in order (closed and
        purged requests have none)."""
        ...

    def complete_many(self, replies: Sequence[tuple[str, Sequence[bytes]]]) -> int:
        """complete() for a batch in one transaction; returns how many were stored."""
        ...

    def retry_later(self, request_id: str, error: str, *, max_attempts: int, backoff: float,
                    backoff_max: float, now: datetime | None = None) -> RequestStatus | None:
        """After a failed attempt: pending again after a backoff, or failed for good.

        Returns the status afterwards, or None if the request no longer exists.
        """
        ...

    def release(self, request_id: str) -> bool:
        """Hand a dispatched request back to pending now, the attempt not counted."""
        ...

    def fail(self, request_id: str, error: str) -> bool:
        """Mark a pending or dispatched request failed for good."""
        ...

    def requeue(self, request_id: str) -> bool:
        """A failed or expired request becomes pending again, attempts reset."""
        ...

    def close(self, request_id: str, *, owners: Sequence[str | None] | None = None) -> None:
        """Delete the request and its reply; an unknown UUID is fine. With `owners`, only if its
        owner is one of them (None standing for a request without owner)."""
        ...

    def close_many(self, request_ids: Sequence[str]) -> None:
        """close() for a batch, whoever owns them, in one transaction; unknown UUIDs are fine."""
        ...

    def record_forwards(self, forwards: Sequence[tuple[str, str, str]]) -> None:
        """Remember requests sent to another site: (request UUID, peer name, UUID there)."""
        ...

    def forwards_of(self, peer: str) -> list[tuple[str, str]]:
        """The requests sent to `peer` and still dispatched: (request UUID, UUID there);
        the remembered forwards of requests no longer dispatched are forgotten."""
        ...

    def forget_forwards(self, request_ids: Sequence[str]) -> None:
        """Forget these requests' forwards (their replies are stored, or they came back)."""
        ...

    def cancel(self, request_id: str, *, owners: Sequence[str | None] | None = None
               ) -> str | None:
        """Cancel a pending (or scheduled) or dispatched request: it becomes cancelled, and is
        never sent, or its late reply is not stored. The state it was in (shown_state), also
        for a finished one, which stays as it was; None if unknown (or, with `owners`, not
        owned by one of them)."""
        ...

    def release_stale(self, *, now: datetime | None = None) -> int:
        """Dispatched requests whose lease ran out become pending (crash recovery)."""
        ...

    def expire(self, *, pending_ttl: float, now: datetime | None = None) -> int:
        """Pending requests older than pending_ttl seconds (since submitted, and since due)
        or past their deadline: expired."""
        ...

    def purge(self, *, reply_ttl: float, now: datetime | None = None) -> int:
        """Delete finished requests that finished more than reply_ttl seconds ago."""
        ...

    def next_due_at(self, services: Sequence[str] | None = None) -> datetime | None:
        """When the earliest pending request is due."""
        ...

    def due_services(self, *, now: datetime | None = None) -> set[str]:
        """Services with pending requests due now (at a cost that does not grow with how many
        requests wait)."""
        ...

    def earliest_due(self) -> dict[str, datetime]:
        """Each service with pending requests and when its earliest one is due (aware UTC),
        at the cost of due_services."""
        ...

    def stats(self) -> StoreStats:
        """Counts by service and status."""
        ...

    def summary(self, *, since: datetime) -> list[ServiceSummary]:
        """Per service, by name: counts by state, the oldest pending request's submission
        time, and the requests completed since `since`."""
        ...

    def requeue_all(self, status: RequestStatus, *, service: str | None = None,
                    dry_run: bool = False) -> int:
        """Every request in `status` (failed or expired), of one service or all, pending again
        with its attempts counted afresh; returns how many (with dry_run: would be)."""
        ...

    def purge_finished(self, status: RequestStatus, *, older_than: float,
                       service: str | None = None, dry_run: bool = False,
                       now: datetime | None = None) -> int:
        """Delete the requests in a finished `status` that finished more than `older_than`
        seconds ago, of one service or all; returns how many (with dry_run: would be)."""
        ...

    def list(self, *, service: str | None = None, status: RequestStatus | None = None,
             limit: int = 100, after: str | None = None,
             scheduled: bool | None = None) -> list[StoredRequest]:
        """Requests in UUID (time) order, filtered, paged by `after`; `scheduled` True keeps
        only the scheduled ones, False leaves them out (see shown_state)."""
        ...

    def identity(self) -> StoreIdentity:
        """The store's identity and location."""
        ...

    def unfinished_by_owner(self, owners: Sequence[str]) -> dict[str, int]:
        """How many pending or dispatched requests each of these owners has stored."""
        ...

    def set_limit(self, service: str, *, max_in_flight: int | None = None,
                  rate: float | None = None, burst: float | None = None) -> ServiceLimit:
        """Limit a service for every dispatcher of the store (replacing its limit, if any);
        the bucket starts full."""
        ...

    def clear_limit(self, service: str) -> bool:
        """Remove a service's limit; False if it had none."""
        ...

    def limits(self) -> Sequence[ServiceLimit]:
        """Every service's limit, by name."""
        ...

    def close_store(self) -> None:
        """Release connections."""
        ...


def check_request_id(request_id: str) -> str:
    """The UUID as 32 lower-case hex digits (from that form or the hyphenated one, any case);
    InvalidRequestError if it is not one."""
    if not isinstance(request_id, str):
        raise InvalidRequestError(f"a request UUID is text, not {type(request_id).__name__}")
    found = canonical_uuid(request_id)
    if found is None:
        raise InvalidRequestError(
            f"not a request UUID (32 hex digits, or 8-4-4-4-12): {request_id[:40]!r}")
    return found


_id_lock = threading.Lock()
_last_id_time = [0, 0]  # (milliseconds, sequence) of the last id made in this process


def new_request_id() -> str:
    """A UUIDv7: milliseconds since the epoch, then a sequence, so later ids sort after earlier
    ones made in this process (even within one millisecond), then random bits."""
    with _id_lock:
        millis = max(time.time_ns() // 1_000_000, _last_id_time[0])
        sequence = _last_id_time[1] + 1 if millis == _last_id_time[0] else 0
        if sequence > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
            millis, sequence = millis + 1, 0
        _last_id_time[:] = [millis, sequence]
    random_bits = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = ((millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | sequence << 64
             | 0x2 << 62 | random_bits)
    return f"{value:032x}"  # uuid.UUID(int=value).hex, without making the UUID


def check_new_request(request: NewRequest, max_request_bytes: int) -> None:
    """InvalidRequestError for an empty service name or an oversized body."""
    if not request.service or len(request.service) > 255:
        raise InvalidRequestError("the service name must be 1 to 255 characters")
    size = sum(len(frame) for frame in request.frames)
    if size > max_request_bytes:
        raise InvalidRequestError(
            f"request body of {size} bytes exceeds the limit of {max_request_bytes} bytes")
    if request.idempotency_key is not None and not 0 < len(request.idempotency_key) <= 255:
        raise InvalidRequestError("an idempotency key must be 1 to 255 characters")
    if not PRIORITY_MIN <= request.priority <= PRIORITY_MAX:
        raise InvalidRequestError(f"a priority must be an integer from {PRIORITY_MIN} to "
                                  f"{PRIORITY_MAX}, not {request.priority}")


def fresh_claims(new: Sequence[NewRequest], claim_new: Mapping[str, int] | None) -> list[bool]:
    """Which of `new` Store.exchange stores claimed: per service the first `claim_new[service]`
    without an idempotency key (a keyed one may be stored already, and is then not inserted)
    or a `not_before` (a delayed one is due later)."""
    if not claim_new:
        return [False] * len(new)
    left = dict(claim_new)
    picked = []
    for request in new:
        take = (request.idempotency_key is None and request.not_before is None
                and left.get(request.service, 0) > 0)
        if take:
            left[request.service] -= 1
        picked.append(take)
    return picked


def check_bulk_state(status: RequestStatus, allowed: Sequence[RequestStatus], action: str) -> None:
    """InvalidRequestError unless a bulk `action` may take requests in `status`."""
    if status not in allowed:
        names = " or ".join(state.value for state in allowed)
        raise InvalidRequestError(f"{action} takes {names} requests, not {status.value}")


def backoff_delay(attempts: int, backoff: float, backoff_max: float) -> float:
    """Seconds to wait after the attempts-th failed attempt: doubling, capped."""
    return float(min(backoff_max, backoff * 2 ** max(0, attempts - 1)))


def failed_after(error: str, attempts: int) -> str:
    """The last_error of a request whose attempts are spent: the count on the error's first
    line, which is the line shown wherever one line is (a traceback may follow it)."""
    first, newline, rest = error.partition("\n")
    return f"{first} (after {attempts} attempts){newline}{rest}"
