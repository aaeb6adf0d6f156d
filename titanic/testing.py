"""Test helpers for titanic users: MemoryStore, a thread-safe in-memory store, and
MemoryTransport, an in-memory stand-in for the dispatcher's forwarding client.

MemoryStore keeps the same contract as the SQL store (the contract tests run against both), so
code built on titanic can be tested without a database. With both, the dispatcher's planner
(`titanic.dispatch.planner.Planner`) runs its turns without a socket: `answer_requests` is one
such turn.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from titanic.client.mdp import Completion
from titanic.dispatch.planner import Planner
from titanic.dispatch.settings import DispatcherSettings, DispatcherStats
from titanic.errors import TitanicTimeoutError
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Frames
from titanic.settings import MAX_REQUEST_BYTES
from titanic.store.types import (
    FINISHED,
    REQUEUABLE,
    SCHEDULED,
    Delivery,
    Exchange,
    NewRequest,
    RequestStatus,
    ServiceLimit,
    ServiceSummary,
    StoredRequest,
    StoreIdentity,
    StoreStats,
    backoff_delay,
    check_bulk_state,
    check_limit,
    check_new_request,
    check_request_id,
    failed_after,
    fresh_claims,
    new_request_id,
    shown_state,
)

__all__ = ["MemoryStore", "MemoryTransport", "answer_requests"]


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


class MemoryStore:
    """The request store in a dict, guarded by a lock."""

    def __init__(self, *, max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.max_request_bytes = max_request_bytes
        self._lock = threading.Lock()
        self._rows: dict[str, StoredRequest] = {}
        self._keys: dict[str, str] = {}
        self._parts: dict[str, dict[int, tuple[bytes, ...]]] = {}  # request -> seq -> frames
        self._forwards: dict[str, tuple[str, str]] = {}  # request -> (peer, UUID there)
        self._limits: dict[str, ServiceLimit] = {}
        self._in_flight_at_claim: dict[str, int] = {}
        self._identity = StoreIdentity(uuid.uuid4().hex, f"memory:{id(self):x}")

    def _update(self, request_id: str,
                change: Callable[[StoredRequest], StoredRequest | None]) -> StoredRequest | None:
        """Apply `change` to the row under the lock; it returns the new row or None (no change)."""
        key = check_request_id(request_id)
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                return None
            new = change(row)
            if new is not None:
                self._rows[key] = new
            return new

    def submit(self, service: str, frames: Sequence[bytes], *, deadline: datetime | None = None,
               idempotency_key: str | None = None) -> str:
        """Store one request and return its UUID."""
        return self.submit_many([NewRequest(service, tuple(frames), deadline,
                                            idempotency_key)])[0]

    def submit_many(self, requests: Sequence[NewRequest]) -> list[str]:
        """Store a batch, all or nothing; UUIDs in input order."""
        for request in requests:
            check_new_request(request, self.max_request_bytes)
        now = datetime.now(UTC)
        ids: list[str] = []
        with self._lock:
            for request in requests:
                known = self._keys.get(request.idempotency_key or "")
                if request.idempotency_key and known and known in self._rows:
                    ids.append(known)
                    continue
                request_id = new_request_id()
                later = request.not_before is not None and _now(request.not_before) > now
                self._rows[request_id] = StoredRequest(
                    id=request_id, service=request.service, request=tuple(request.frames),
                    reply=None, status=RequestStatus.PENDING, attempts=0, created_at=now,
                    due_at=_now(request.not_before) if later else now, lease_until=None,
                    completed_at=None, last_error=None,
                    deadline=None if request.deadline is None else _now(request.deadline),
                    idempotency_key=request.idempotency_key, owner=request.owner,
                    priority=request.priority)
                if request.idempotency_key:
                    self._keys[request.idempotency_key] = request_id
                ids.append(request_id)
        return ids

    def get(self, request_id: str) -> StoredRequest | None:
        """The request, or None if unknown."""
        key = check_request_id(request_id)
        with self._lock:
            return self._rows.get(key)

    def claim_due(self, services: Sequence[str] | None, limit: int, lease: float, *,
                  now: datetime | None = None) -> list[StoredRequest]:
        """Lease up to `limit` due pending requests, highest priority first, then oldest due
        (a limited service's within its limit)."""
        return self._claim(services, limit, lease, now)[0]

    def _claim(self, services: Sequence[str] | None, limit: int, lease: float,
               now: datetime | None) -> tuple[list[StoredRequest], dict[str, float]]:
        """claim_due, and per limited service whose rate held it back, the seconds to wait."""
        moment = _now(now)
        wanted = None if services is None else set(services)
        waits: dict[str, float] = {}
        with self._lock:
            due = sorted((row for row in self._rows.values()
                          if row.status is RequestStatus.PENDING and row.due_at <= moment
                          and (wanted is None or row.service in wanted)),
                         key=lambda row: (-row.priority, row.due_at, row.id))
            allowed = {service: self._allowed(service, limit, moment, due)
                       for service in {row.service for row in due} & set(self._limits)}
            taken: list[StoredRequest] = []
            counts: Counter[str] = Counter()
            for row in due:
                cap = allowed.get(row.service)
                if len(taken) == limit or (cap is not None and counts[row.service] >= cap[0]):
                    continue
                taken.append(row)
                counts[row.service] += 1
            claimed = [replace(row, status=RequestStatus.DISPATCHED, attempts=row.attempts + 1,
                               lease_until=moment + timedelta(seconds=lease)) for row in taken]
            for row in claimed:
                self._rows[row.id] = row
            for service, (room, wait) in allowed.items():
                count = sum(1 for row in claimed if row.service == service)
                waits.update(self._spend(service, count, room, wait, moment))
        return claimed, waits

    def _allowed(self, service: str, limit: int, moment: datetime,
                 due: Sequence[StoredRequest]) -> tuple[int, float | None]:
        """How many of a limited service a claim may take, and its tokens (under the lock)."""
        found = self._limits[service]
        in_flight = sum(1 for row in self._rows.values()
                        if row.service == service and row.status is RequestStatus.DISPATCHED)
        allowed, tokens = found.allowance(limit, in_flight, moment)
        self._limits[service] = replace(found, tokens=tokens, refilled_at=moment)
        self._in_flight_at_claim[service] = in_flight
        return allowed, tokens if found.rate is not None else None

    def _spend(self, service: str, count: int, allowed: int, tokens: float | None,
               moment: datetime) -> dict[str, float]:
        """Spend the tokens of what was claimed; the wait when the rate held it back."""
        found = self._limits[service]
        if tokens is None:
            return {}
        left = tokens - count
        self._limits[service] = replace(found, tokens=left, refilled_at=moment)
        in_flight = self._in_flight_at_claim.get(service, 0)
        held_back = count == allowed and (found.max_in_flight is None
                                          or in_flight + count < found.max_in_flight)
        wait = found.wait_after(left)
        return {service: wait} if held_back and wait is not None else {}

    def set_limit(self, service: str, *, max_in_flight: int | None = None,
                  rate: float | None = None, burst: float | None = None) -> ServiceLimit:
        """Limit a service (see Store.set_limit)."""
        size = check_limit(max_in_flight, rate, burst)
        limit = ServiceLimit(service, max_in_flight, rate, size, size, datetime.now(UTC))
        with self._lock:
            self._limits[service] = limit
        return limit

    def clear_limit(self, service: str) -> bool:
        """Remove a service's limit; False if it had none."""
        with self._lock:
            return self._limits.pop(service, None) is not None

    def limits(self) -> list[ServiceLimit]:
        """Every service's limit, by name."""
        with self._lock:
            return [self._limits[name] for name in sorted(self._limits)]

    def exchange(self, new: Sequence[NewRequest],
                 replies: Sequence[tuple[str, Sequence[bytes]]], claims: Mapping[str, int],
                 lease: float, *, now: datetime | None = None,
                 claim_new: Mapping[str, int] | None = None,
                 parts: Sequence[tuple[str, int, Sequence[bytes]]] = (),
                 trims: Sequence[tuple[str, int]] = ()) -> Exchange:
        """Store new requests, parts of streamed replies and replies, then claim per service;
        the new requests `claim_new` names are stored claimed (see Store.exchange), a limited
        service's never."""
        for request in new:
            check_new_request(request, self.max_request_bytes)
        limited = set(self._limits)
        claims = {**claims, **{service: room for service, room in (claim_new or {}).items()
                               if service in limited}}
        claim_new = {service: room for service, room in (claim_new or {}).items()
                     if service not in limited}
        ids = self.submit_many(new) if new else []
        lease_until = _now(now) + timedelta(seconds=lease)
        fresh = [self._update(request_id, lambda row: replace(
                     row, status=RequestStatus.DISPATCHED, attempts=1, lease_until=lease_until))
                 for request_id, take in zip(ids, fresh_claims(new, claim_new), strict=True)
                 if take]
        self._store_parts(parts, trims)
        completed = self.complete_many(replies)
        claimed = [Delivery(row.id, row.service, row.request, row.attempts)
                   for row in fresh if row is not None]
        waits: dict[str, float] = {}
        for service, room in claims.items():
            if room > 0:
                rows, wait = self._claim([service], room, lease, now)
                claimed += [Delivery(row.id, row.service, row.request, row.attempts,
                                     row.priority) for row in rows]
                waits.update(wait)
        return Exchange(ids, completed, claimed, waits)

    def _store_parts(self, parts: Sequence[tuple[str, int, Sequence[bytes]]],
                     trims: Sequence[tuple[str, int]]) -> None:
        with self._lock:
            for request_id, seq, frames in parts:
                key = check_request_id(request_id)
                row = self._rows.get(key)
                if row is not None and row.status is RequestStatus.DISPATCHED:
                    self._parts.setdefault(key, {})[seq] = tuple(frames)
            for request_id, last in trims:
                stored = self._parts.get(check_request_id(request_id), {})
                for seq in [seq for seq in stored if seq > last]:
                    del stored[seq]

    def parts_after(self, request_id: str, after: int) -> list[tuple[int, tuple[bytes, ...]]]:
        """The stored parts of a streamed reply numbered after `after`, in order."""
        with self._lock:
            stored = self._parts.get(check_request_id(request_id), {})
            return sorted((seq, frames) for seq, frames in stored.items() if seq > after)

    def complete(self, request_id: str, reply: Sequence[bytes]) -> bool:
        """Store the reply: done."""
        now = datetime.now(UTC)
        return self._update(request_id, lambda row: replace(
            row, reply=tuple(reply), status=RequestStatus.DONE, completed_at=now,
            lease_until=None) if row.status in (RequestStatus.PENDING, RequestStatus.DISPATCHED)
            else None) is not None

    def complete_many(self, replies: Sequence[tuple[str, Sequence[bytes]]]) -> int:
        """complete() for a batch."""
        return sum(self.complete(request_id, reply) for request_id, reply in replies)

    def retry_later(self, request_id: str, error: str, *, max_attempts: int, backoff: float,
                    backoff_max: float, now: datetime | None = None) -> RequestStatus | None:
        """After a failed attempt: pending after a backoff, or failed for good."""
        moment = _now(now)

        def change(row: StoredRequest) -> StoredRequest | None:
            if row.status is not RequestStatus.DISPATCHED:
                return None
            if row.attempts >= max_attempts:
                return replace(row, status=RequestStatus.FAILED, completed_at=moment,
                               lease_until=None,
                               last_error=failed_after(error, row.attempts))
            delay = backoff_delay(row.attempts, backoff, backoff_max)
            return replace(row, status=RequestStatus.PENDING, lease_until=None,
                           due_at=moment + timedelta(seconds=delay), last_error=error)

        self._update(request_id, change)
        row = self.get(request_id)
        return None if row is None else row.status

    def release(self, request_id: str) -> bool:
        """Dispatched back to pending now, the attempt not counted."""
        now = datetime.now(UTC)
        return self._update(request_id, lambda row: replace(
            row, status=RequestStatus.PENDING, due_at=now, lease_until=None,
            attempts=row.attempts - 1) if row.status is RequestStatus.DISPATCHED
            else None) is not None

    def fail(self, request_id: str, error: str) -> bool:
        """Pending or dispatched: failed for good."""
        now = datetime.now(UTC)
        return self._update(request_id, lambda row: replace(
            row, status=RequestStatus.FAILED, completed_at=now, lease_until=None,
            last_error=error) if row.status in (RequestStatus.PENDING, RequestStatus.DISPATCHED)
            else None) is not None

    def requeue(self, request_id: str) -> bool:
        """Failed or expired: pending again, attempts reset."""
        now = datetime.now(UTC)
        return self._update(request_id, lambda row: replace(
            row, status=RequestStatus.PENDING, due_at=now, attempts=0, completed_at=None,
            lease_until=None) if row.status in (RequestStatus.FAILED, RequestStatus.EXPIRED)
            else None) is not None

    def close(self, request_id: str, *, owners: Sequence[str | None] | None = None) -> None:
        """Delete the request and its reply (with `owners`: only if its owner is one of them)."""
        key = check_request_id(request_id)
        with self._lock:
            row = self._rows.get(key)
            if row is None or (owners is not None and row.owner not in owners):
                return
            del self._rows[key]
            self._parts.pop(key, None)
            if row is not None and row.idempotency_key:
                self._keys.pop(row.idempotency_key, None)

    def record_forwards(self, forwards: Sequence[tuple[str, str, str]]) -> None:
        """Remember requests sent to another site."""
        with self._lock:
            for request_id, peer, far_id in forwards:
                self._forwards[check_request_id(request_id)] = (peer, check_request_id(far_id))

    def forwards_of(self, peer: str) -> list[tuple[str, str]]:
        """The requests sent to `peer` and still dispatched; forgets the others' forwards."""
        with self._lock:
            for request_id in list(self._forwards):
                row = self._rows.get(request_id)
                if row is None or row.status is not RequestStatus.DISPATCHED:
                    del self._forwards[request_id]
            return sorted((request_id, far_id) for request_id, (name, far_id)
                          in self._forwards.items() if name == peer)

    def forget_forwards(self, request_ids: Sequence[str]) -> None:
        """Forget these requests' forwards."""
        with self._lock:
            for request_id in request_ids:
                self._forwards.pop(check_request_id(request_id), None)

    def close_many(self, request_ids: Sequence[str]) -> None:
        """close() for a batch, whoever owns them."""
        for request_id in request_ids:
            self.close(request_id)

    def _change_all(self, change: Callable[[StoredRequest], StoredRequest | None]) -> int:
        with self._lock:
            changed = [new for row in self._rows.values() if (new := change(row)) is not None]
            for row in changed:
                self._rows[row.id] = row
        return len(changed)

    def cancel(self, request_id: str, *, owners: Sequence[str | None] | None = None
               ) -> str | None:
        """Cancel a pending or dispatched request (see Store.cancel); the state it was in."""
        key = check_request_id(request_id)
        now = datetime.now(UTC)
        with self._lock:
            row = self._rows.get(key)
            if row is None or (owners is not None and row.owner not in owners):
                return None
            if row.status in (RequestStatus.PENDING, RequestStatus.DISPATCHED):
                self._rows[key] = replace(row, status=RequestStatus.CANCELLED, completed_at=now,
                                          lease_until=None, last_error="cancelled")
            return shown_state(row, now)

    def release_stale(self, *, now: datetime | None = None) -> int:
        """Dispatched requests whose lease ran out: pending."""
        moment = _now(now)
        return self._change_all(lambda row: replace(
            row, status=RequestStatus.PENDING, due_at=moment, lease_until=None)
            if row.status is RequestStatus.DISPATCHED and row.lease_until is not None
            and row.lease_until < moment else None)

    def expire(self, *, pending_ttl: float, now: datetime | None = None) -> int:
        """Pending requests too old (since submitted and since due) or past their deadline:
        expired."""
        moment = _now(now)
        too_old = moment - timedelta(seconds=pending_ttl)

        def change(row: StoredRequest) -> StoredRequest | None:
            if row.status is not RequestStatus.PENDING:
                return None
            if row.created_at < too_old and row.due_at < too_old:
                why = f"not delivered within {pending_ttl:g} s"
            elif row.deadline is not None and row.deadline < moment:
                why = "not delivered before its deadline"
            else:
                return None
            return replace(row, status=RequestStatus.EXPIRED, completed_at=moment,
                           last_error=why)

        return self._change_all(change)

    def purge(self, *, reply_ttl: float, now: datetime | None = None) -> int:
        """Delete requests finished more than reply_ttl seconds ago."""
        cutoff = _now(now) - timedelta(seconds=reply_ttl)
        with self._lock:
            old = [row.id for row in self._rows.values() if row.status in FINISHED
                   and row.completed_at is not None and row.completed_at < cutoff]
        for request_id in old:
            self.close(request_id)
        return len(old)

    def next_due_at(self, services: Sequence[str] | None = None) -> datetime | None:
        """When the earliest pending request is due."""
        with self._lock:
            due = [row.due_at for row in self._rows.values()
                   if row.status is RequestStatus.PENDING
                   and (services is None or row.service in services)]
        return min(due, default=None)

    def earliest_due(self) -> dict[str, datetime]:
        """Each service with pending requests and when its earliest one is due."""
        found: dict[str, datetime] = {}
        with self._lock:
            for row in self._rows.values():
                if row.status is RequestStatus.PENDING:
                    first = found.get(row.service)
                    found[row.service] = row.due_at if first is None else min(first, row.due_at)
        return found

    def due_services(self, *, now: datetime | None = None) -> set[str]:
        """Services with pending requests due now."""
        moment = _now(now)
        with self._lock:
            return {row.service for row in self._rows.values()
                    if row.status is RequestStatus.PENDING and row.due_at <= moment}

    def stats(self) -> StoreStats:
        """Counts by service and status."""
        counts: dict[tuple[str, RequestStatus], int] = {}
        with self._lock:
            for row in self._rows.values():
                counts[(row.service, row.status)] = counts.get((row.service, row.status), 0) + 1
        return StoreStats(counts)

    def summary(self, *, since: datetime) -> list[ServiceSummary]:
        """Per service: counts by state, oldest pending submission, completions since."""
        moment = _now(since)
        counts: dict[str, dict[RequestStatus, int]] = {}
        oldest: dict[str, datetime] = {}
        done: dict[str, int] = {}
        later: dict[str, int] = {}
        now = datetime.now(UTC)
        with self._lock:
            for row in self._rows.values():
                by_state = counts.setdefault(row.service, {})
                by_state[row.status] = by_state.get(row.status, 0) + 1
                if shown_state(row, now) == SCHEDULED:
                    later[row.service] = later.get(row.service, 0) + 1
                elif row.status is RequestStatus.PENDING:
                    first = oldest.get(row.service)
                    oldest[row.service] = row.created_at if first is None else min(
                        first, row.created_at)
                if (row.status is RequestStatus.DONE and row.completed_at is not None
                        and row.completed_at >= moment):
                    done[row.service] = done.get(row.service, 0) + 1
        return [ServiceSummary(service, counts[service], oldest.get(service),
                               done.get(service, 0), later.get(service, 0))
                for service in sorted(counts)]

    def requeue_all(self, status: RequestStatus, *, service: str | None = None,
                    dry_run: bool = False) -> int:
        """Every request in `status` (failed or expired): pending again, attempts reset."""
        check_bulk_state(status, REQUEUABLE, "retry")
        now = datetime.now(UTC)

        def change(row: StoredRequest) -> StoredRequest | None:
            if row.status is not status or (service and row.service != service):
                return None
            return row if dry_run else replace(
                row, status=RequestStatus.PENDING, due_at=now, attempts=0, completed_at=None,
                lease_until=None)

        return self._change_all(change)

    def purge_finished(self, status: RequestStatus, *, older_than: float,
                       service: str | None = None, dry_run: bool = False,
                       now: datetime | None = None) -> int:
        """Delete requests in a finished `status` finished more than older_than s ago."""
        check_bulk_state(status, FINISHED, "purge")
        cutoff = _now(now) - timedelta(seconds=older_than)
        with self._lock:
            old = [row.id for row in self._rows.values() if row.status is status
                   and (not service or row.service == service)
                   and row.completed_at is not None and row.completed_at < cutoff]
        if not dry_run:
            for request_id in old:
                self.close(request_id)
        return len(old)

    def list(self, *, service: str | None = None, status: RequestStatus | None = None,
             limit: int = 100, after: str | None = None,
             scheduled: bool | None = None) -> list[StoredRequest]:
        """Requests in UUID (time) order, filtered, paged by `after`; `scheduled` True keeps
        only the scheduled ones, False leaves them out (see shown_state)."""
        start = check_request_id(after) if after is not None else ""
        now = datetime.now(UTC)
        with self._lock:
            rows = sorted((row for row in self._rows.values() if row.id > start
                           and (service is None or row.service == service)
                           and (status is None or row.status is status)
                           and (scheduled is None
                                or (shown_state(row, now) == SCHEDULED) == scheduled)),
                          key=lambda row: row.id)
        return rows[:limit]

    def identity(self) -> StoreIdentity:
        """A random identity made with the store."""
        return self._identity

    def unfinished_by_owner(self, owners: Sequence[str]) -> dict[str, int]:
        """How many pending or dispatched requests each of these owners has stored."""
        wanted = set(owners)
        counts: dict[str, int] = {}
        with self._lock:
            for row in self._rows.values():
                owner = row.owner
                if owner in wanted and row.status in (RequestStatus.PENDING,
                                                      RequestStatus.DISPATCHED):
                    assert owner is not None
                    counts[owner] = counts.get(owner, 0) + 1
        return counts

    def close_store(self) -> None:
        """Nothing to release."""


class MemoryTransport:
    """Records what the planner sends, with `slots` requests in flight at most; the test then
    completes each one (`complete`) or lets it time out (`time_out`)."""

    def __init__(self, slots: int = 64) -> None:
        self.slots = slots
        #: Every request sent, in order: (service, body, tag).
        self.sent: list[tuple[bytes, Frames, Hashable]] = []
        self._in_flight: list[Hashable] = []

    @property
    def free_slots(self) -> int:
        """How many more requests can be sent before one completes."""
        return self.slots - len(self._in_flight)

    @property
    def in_flight(self) -> list[Hashable]:
        """The tags of requests sent and not completed, oldest first."""
        return list(self._in_flight)

    def send(self, service: str | bytes, body: Sequence[bytes], tag: Hashable = None, *,
             timeout: float | None = None, retries: int | None = None) -> None:
        """Take a request (as PipelinedClient.send does); RuntimeError without a free slot."""
        if not self.free_slots:
            raise RuntimeError("no free slot: complete a request first")
        self.sent.append((service.encode() if isinstance(service, str) else service,
                          list(body), tag))
        self._in_flight.append(tag)

    def complete(self, tag: Hashable, reply: Sequence[bytes]) -> Completion:
        """The completion of a request in flight, answered with `reply` (its tag as sent)."""
        return Completion(self._take(tag), list(reply), None)

    def time_out(self, tag: Hashable) -> Completion:
        """The completion of a request in flight that got no reply in time."""
        return Completion(self._take(tag), None, TitanicTimeoutError())

    def _take(self, tag: Hashable) -> Hashable:
        """The tag in flight equal to `tag` (as sent: it may carry more than equality looks
        at), no longer in flight."""
        return self._in_flight.pop(self._in_flight.index(tag))


def answer_requests(store: MemoryStore, bodies: Sequence[Frames],
                    callers: Sequence[Caller | None] | None = None, *,
                    settings: DispatcherSettings | None = None) -> list[Frames]:
    """titanic.request bodies (sent by `callers`, when known) answered as the dispatcher
    answers them: one planner turn."""
    answers: list[Frames] = []
    planner = Planner(store, MemoryTransport(), settings or DispatcherSettings(),
                      DispatcherStats())
    planner.turn(bodies, [], 0.0, answer=answers.extend, callers=callers, claim=False)
    return answers
