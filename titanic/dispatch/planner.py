"""The dispatcher's decisions, turn by turn, over a store and a transport it is handed.

A turn takes the titanic.request bodies that arrived, the completions of forwarded requests and the
time. It stores the new requests and the replies (and claims due requests) in one store transaction
(a lone new request in a commit of its own, answered before the rest), answers the submitters, sends
what it claimed through the transport, and reschedules what timed out. A reply that arrives alone
waits briefly for a turn that commits anyway (reply_linger). It never waits and owns no socket:
`titanic.dispatch.standalone.Dispatcher` drives it with a PipelinedClient as the transport; tests
drive it with `MemoryStore` and `titanic.testing.MemoryTransport`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from titanic.client.mdp import Completion, Partial
from titanic.dispatch.in_flight import START, Windows
from titanic.dispatch.services import (
    acknowledge,
    check_requests,
    refuse_for_store_error,
    refuse_over_owner_limit,
)
from titanic.dispatch.settings import DispatcherSettings, DispatcherStats
from titanic.errors import BrokerRefusedError, StoreError
from titanic.logs import about
from titanic.protocol import mmi, tsp
from titanic.protocol.failure import FailureKind, FailureReport, parse_failure
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Frames
from titanic.store import Delivery, Exchange, NewRequest, RequestStatus, Store

log = logging.getLogger("titanic.dispatcher")

#: Replies held back (reply_linger) at most: more are stored at once.
_MAX_HELD = 256
#: A part of a streamed reply to store: (request id, part number, frames).
Part = tuple[str, int, Frames]
#: New requests in one turn from which their commit also stores replies and claims (fewer
#: commits under load); a lone one is answered before those (a quicker answer when idle).
_ONE_COMMIT_FROM = 2


@dataclass(frozen=True, slots=True)
class Forwarded:
    """Completion tag of a stored request forwarded to its service."""

    request_id: str
    service: str
    #: When it was sent (monotonic seconds): its round trip adapts the service's window.
    sent: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class PresenceCheck:
    """Completion tag of an mmi.service question: has `service` workers now?"""

    service: str


class Transport(Protocol):
    """Where forwarded requests go (a PipelinedClient); each send completes later, with its tag."""

    @property
    def free_slots(self) -> int:
        """How many more requests can be sent before one completes."""
        ...

    def send(self, service: str | bytes, body: Sequence[bytes], tag: Hashable = None, *,
             timeout: float | None = None, retries: int | None = None) -> None:
        """Send a request; its Completion carries `tag`."""
        ...


def _ignore(seconds: float) -> None:
    """A duration observer that keeps nothing."""


class Presence:
    """Cached mmi.service answers (which services have workers now), asked without blocking."""

    def __init__(self, settings: DispatcherSettings) -> None:
        self._settings = settings
        self._known: dict[str, tuple[bool, float]] = {}
        self._asking: set[str] = set()

    def has_workers(self, service: str, now: float, transport: Transport, *,
                    reserved: int = 0) -> bool:
        """The last answer while it is fresh; else ask again (the answer comes as a completion;
        only if the transport has a free slot beyond `reserved`) and go on with the last answer
        meanwhile (none yet: no workers)."""
        present, checked = self._known.get(service, (False, -1e9))
        ttl = self._settings.presence_ttl if present else self._settings.presence_interval
        if (now - checked >= ttl and service not in self._asking
                and transport.free_slots > reserved):
            transport.send(mmi.SERVICE, [service.encode()], PresenceCheck(service), timeout=1.0,
                           retries=0)
            self._asking.add(service)
        return present

    def answer(self, service: str, reply: Frames | None, now: float) -> bool:
        """Record an mmi.service answer (None: the broker did not answer); True if present."""
        self._asking.discard(service)
        present = reply is not None and reply[:1] == [mmi.FOUND]
        if reply is None:
            log.warning("broker did not answer mmi.service for %r", service)
        self._known[service] = (present, now)
        return present

    def absent(self, service: str) -> bool:
        """The last answer about `service` said it had no workers (or none came)."""
        known = self._known.get(service)
        return known is not None and not known[0]

    def forget(self, service: str) -> None:
        """Ask again next time (a request to it timed out)."""
        self._known.pop(service, None)

    def forget_all(self) -> None:
        """Ask about every service again before forwarding to it (the broker restarted: its
        workers have yet to register with it again)."""
        self._known.clear()


def _split_plan(plan: dict[str, int], new: Sequence[NewRequest], fresh: set[str]
            ) -> tuple[dict[str, int], dict[str, int]]:
    """The claim plan as claims of due requests, and new requests to store claimed: a fresh
    service's room goes to its new requests (they are all that is due there), unless one
    of them has an idempotency key (it may be stored already: claimed like the rest), a time
    to wait for or a priority (the claim then picks what is due, highest first)."""
    if not fresh:
        return plan, {}
    counts = Counter(request.service for request in new if request.service in fresh)
    keyed = {request.service for request in new if request.idempotency_key is not None
             or request.not_before is not None or request.priority}
    claims: dict[str, int] = {}
    claim_new: dict[str, int] = {}
    for service, room in plan.items():
        if service in fresh and service not in keyed:
            claim_new[service] = min(room, counts[service])
        else:
            claims[service] = room
    return claims, claim_new


def _refusal(error: Exception | None) -> FailureReport | None:
    """The broker's refusal of a forward as a failure report (a 503 is tried again after the
    backoff, a 400 or 413 would be refused again: failed at once); None after a timeout."""
    if not isinstance(error, BrokerRefusedError):
        return None
    kind = FailureKind.RETRY if error.retryable else FailureKind.PERMANENT
    return FailureReport(kind, str(error))


class Planner:
    """What the dispatcher decides each turn; see the module docstring."""

    def __init__(self, store: Store, transport: Transport, settings: DispatcherSettings,
                 stats: DispatcherStats, *,
                 observe_store: Callable[[float], None] | None = None) -> None:
        self.store = store
        #: Told each store exchange's duration in seconds (titanic.ops.metrics' histogram).
        self.observe_store = observe_store or _ignore
        self.transport = transport
        self.settings = settings
        self.stats = stats
        self.presence = Presence(settings)
        self.in_flight: Counter[str] = Counter()
        self.windows = Windows(settings.max_in_flight_per_service, settings.request_timeout)
        self.candidates: set[str] = set()  # services that may have due requests
        self._held: list[tuple[str, Frames]] = []  # replies not stored yet (reply_linger)
        #: Requests whose reply was stored, or that failed for good, since the loop last took
        #: them (`take_finished()`): the waits held for them are answered then.
        self._finished: list[str] = []
        #: Requests whose streamed reply gained parts since the loop last took them
        #: (`take_progressed()`): the follows held for them are answered then.
        self._progressed: set[str] = set()
        #: Per request forwarded now whose reply streams: the number of its last part.
        self._part_counts: dict[str, int] = {}
        #: Requests with parts stored by an attempt that did not answer: the attempt that does
        #: answer trims them to its own.
        self._streamed: set[str] = set()
        #: When the replies held back must be stored, even alone (None: none held).
        self.held_until: float | None = None
        #: Claimed in a turn of a request arriving back to back (forward_linger), not sent yet;
        #: the next turn that stores a submission sends them before its commit.
        self._unsent: list[Delivery] = []
        #: When those must be sent even if no submission comes (None: none waiting).
        self.forward_until: float | None = None
        #: When the earliest request not yet due at the last survey is due (monotonic time).
        self.due_until: float | None = None
        #: When each service whose rate limit held back a claim may claim again.
        self._rate_waits: dict[str, float] = {}
        self._last_submit = float("-inf")  # when the last turn with a titanic.request began
        self._warned_anonymous = False
        # The clean-up runs on a thread of its own (Dispatcher), and counts its store errors
        # in the same field as the loop: both under this lock, so that none is lost.
        self._errors_lock = threading.Lock()

    # -- one turn -------------------------------------------------------------------------------

    def turn(self, submits: Sequence[Frames], completions: Iterable[Completion], now: float, *,
             answer: Callable[[list[Frames]], None],
             callers: Sequence[Caller | None] | None = None, claim: bool = True,
             partials: Sequence[Partial] = ()) -> bool:
        """Store the new requests (owned by their `callers`, when the broker named them), the
        parts of streamed replies that came (`partials`) and the replies, and claim due
        requests, in one transaction; then `answer` the submits (one reply body each, in order),
        send what was claimed, and reschedule what timed out. True if a service may have more
        due than was claimed."""
        if self._unsent and (submits or not claim or now >= (self.forward_until or now)):
            self._send_unsent(now)
        accepted, answers = self._check(submits, callers)
        new = [request for _, request in accepted]
        gap = now - self._last_submit
        back_to_back = len(new) == 1 and gap <= self.settings.forward_linger
        if submits:
            self._last_submit = now
        self._note_scheduled(new)
        # Services with nothing due before these requests came: they can be stored claimed.
        fresh = {request.service for request in new} - self.candidates
        self.candidates.update(request.service for request in new)
        parts = self._sort_partials(partials)
        replies, failed, trims = self._sort(completions, now, parts)
        plan = self._claim_plan(now) if claim else {}
        claims, claim_new = _split_plan(plan, new, fresh)
        # Back to back, the replies wait too: for a turn without a submitter waiting, or
        # reply_linger. Parts are stored as they come, and the replies held go with them.
        replies = self._replies_to_store(
            replies, now, alone=claim and not (parts or trims)
            and (back_to_back or not (new or plan)))
        # A lone new request is answered first: its commit holds only itself, and the replies
        # and claims follow in a second commit, off its submitter's path. With more at once
        # the dispatcher is busy, and one commit for everything costs less: the claims run
        # after the inserts, so a request stored now can be claimed and sent in this turn.
        # A store error leaves the replies unstored: their leases send those requests again.
        streamed = (parts, trims)
        split = 0 < len(new) < _ONE_COMMIT_FROM and bool(replies or claims or parts or trims)
        result = self._exchange(new, [] if split else replies, {} if split else claims,
                                claim_new, *(((), ()) if split else streamed))
        if isinstance(result, StoreError):
            refuse_for_store_error(answers, accepted, result)
        else:
            acknowledge(answers, accepted, result.ids)
            self.stats.completed += result.completed
            if not split:
                self.stats.discarded += len(replies) - result.completed
                self._finished.extend(request_id for request_id, _ in replies)
                self._progressed.update(request_id for request_id, _, _ in parts)
        if submits:
            answer([reply or [tsp.Status.ERROR.frame()] for reply in answers])
        if split and isinstance(result, Exchange):
            rest = self._exchange([], replies, claims, {}, *streamed)
            if isinstance(rest, Exchange):
                self.stats.completed += rest.completed
                self.stats.discarded += len(replies) - rest.completed
                self._finished.extend(request_id for request_id, _ in replies)
                self._progressed.update(request_id for request_id, _, _ in parts)
                result = Exchange(result.ids, result.completed, result.claimed + rest.claimed,
                                  {**result.waits, **rest.waits})
        # Back to back, what was claimed waits for the next submission: expected about `gap`
        # from now, waited for twice that at most.
        more = isinstance(result, Exchange) and self._send_claimed(
            result, plan, now, hold_until=now + 2 * gap if back_to_back else None)
        for request_id, service, report in failed:
            self.guarded(partial(self._retry, request_id, service, report))
        return more

    def someone_waits(self, now: float) -> None:
        """A titanic.reply or titanic.close came (called before it is served): a client may be
        waiting for a result, not sending its next request. The replies held back
        (reply_linger) are stored now, so that it finds them; what is kept for the next
        submission goes now, and that submission will not count as back to back
        (forward_linger)."""
        self._last_submit = float("-inf")
        held = self._replies_to_store([], now, alone=False)  # all of them, none held after
        if held and isinstance(result := self._exchange([], held, {}, {}), Exchange):
            self.stats.completed += result.completed
            self.stats.discarded += len(held) - result.completed
            self._finished.extend(request_id for request_id, _ in held)
        if self._unsent:
            self._send_unsent(now)

    def take_progressed(self) -> set[str]:
        """The requests whose streamed reply gained parts since the last call."""
        progressed, self._progressed = self._progressed, set()
        return progressed

    def take_finished(self) -> list[str]:
        """The requests whose reply was stored, or that failed for good, since the last call."""
        finished, self._finished = self._finished, []
        return finished

    def broker_lost(self, now: float) -> None:
        """The dispatcher had to register with a broker again (the broker restarted, or lost
        it): no mmi.service answer from before is trusted, so nothing more goes to a service
        before the broker says it has workers now (until they register again, a request sent
        would wait in the broker's queue, and run after all if this dispatcher died meanwhile,
        its reply lost), and every window restarts small (titanic.dispatch.in_flight)."""
        self.presence.forget_all()
        for service in {*self.windows.services(), *self.in_flight}:
            self.windows.restart(service, now, in_flight=self.in_flight[service])

    def forwarding(self) -> dict[str, tuple[int, int]]:
        """Per service: its requests in flight now and its window (titanic.dispatch.in_flight),
        for the services forwarded to so far. Safe to call from another thread."""
        in_flight = dict(self.in_flight)
        return {service: (in_flight.get(service, 0), self.windows.limit(service))
                for service in sorted(set(in_flight) | set(self.windows.services()))}

    def _replies_to_store(self, replies: list[tuple[str, Frames]], now: float, *,
                          alone: bool) -> list[tuple[str, Frames]]:
        """The replies to store this turn, those held back before included; none when the turn
        would commit only replies (`alone`) and reply_linger has not run out since the first
        was held: a turn that commits anyway stores them, without a transaction of their own."""
        held = self._held + replies if self._held else replies
        linger = self.settings.reply_linger
        if alone and held and linger > 0 and len(held) < _MAX_HELD:
            if self.held_until is None:
                self.held_until = now + linger
            if now < self.held_until:
                self._held = held
                return []
        self._held, self.held_until = [], None
        return held

    def _check(self, bodies: Sequence[Frames], callers: Sequence[Caller | None] | None
               ) -> tuple[list[tuple[int, NewRequest]], list[Frames | None]]:
        """The titanic.requests to store, owned by their callers, and the answers of those
        refused (malformed, or over their key's limit)."""
        if (self.settings.identities and not self._warned_anonymous and callers is not None
                and None in callers):
            self._warned_anonymous = True
            log.warning("the broker named no caller for a titanic.request: it is stored without "
                        "an owner, for anyone to fetch (is the broker using CURVE?)")
        accepted, answers = check_requests(bodies, self.store.max_request_bytes, callers)
        limit = self.settings.max_stored_per_key
        owners = [request.owner for _, request in accepted if request.owner is not None]
        if not limit or not owners:
            return accepted, answers
        try:
            stored = self.store.unfinished_by_owner(owners)
        except StoreError as exc:
            self._count_store_error()
            refuse_for_store_error(answers, accepted, exc)
            return [], answers
        kept = refuse_over_owner_limit(answers, accepted, stored, limit)
        self.stats.over_key_limit += len(accepted) - len(kept)
        return kept, answers

    def _exchange(self, new: list[NewRequest], replies: list[tuple[str, Frames]],
                  claims: dict[str, int], claim_new: dict[str, int],
                  parts: Sequence[Part] = (), trims: Sequence[tuple[str, int]] = ()
                  ) -> Exchange | StoreError:
        """Store.exchange, or the error (counted) if the store failed."""
        if not (new or replies or claims or parts or trims):
            return Exchange([], 0, [])  # nothing to store or claim: no call
        started = time.monotonic()
        try:
            if parts or trims:
                return self.store.exchange(new, replies, claims, self.settings.lease,
                                           claim_new=claim_new, parts=parts, trims=trims)
            return self.store.exchange(new, replies, claims, self.settings.lease,
                                       claim_new=claim_new)
        except StoreError as exc:
            self._count_store_error()
            if not new:  # with new requests the refusal's answer logs it
                log.error("store error: %s", exc)
            return exc
        finally:
            self.observe_store(time.monotonic() - started)

    def _sort_partials(self, partials: Sequence[Partial]) -> list[Part]:
        """The parts of streamed replies to store, of requests forwarded by this planner."""
        parts: list[Part] = []
        for part in partials:
            tag = part.tag
            if isinstance(tag, Forwarded):
                parts.append((tag.request_id, part.seq, part.body))
                self._part_counts[tag.request_id] = part.seq
        return parts

    def _attempt_ended(self, request_id: str) -> None:
        """A forward ended without a reply: the parts it streamed stay, for the attempt that
        answers to trim."""
        if self._part_counts.pop(request_id, 0):
            self._streamed.add(request_id)

    def _streamed_end(self, completion: Completion, request_id: str,
                      parts: list[Part]) -> tuple[str, int] | None:
        """For a reply that streamed (or whose earlier attempt did): its FINAL's frames as its
        last part, added to `parts`, and the trim of any later part an earlier attempt left."""
        count = self._part_counts.pop(request_id, 0)
        if not count and request_id not in self._streamed:
            return None
        self._streamed.discard(request_id)
        if count and completion.reply is not None:
            final = completion.reply[completion.final_from:]
            if final:
                count += 1
                parts.append((request_id, count, final))
        return request_id, count

    def _sort(self, completions: Iterable[Completion], now: float, parts: list[Part]
              ) -> tuple[list[tuple[str, Frames]], list[tuple[str, str, FailureReport | None]],
                         list[tuple[str, int]]]:
        """Replies to store, requests that failed: timed out (no report) or answered with a
        failure report, and the trims of streamed replies (their last parts added to
        `parts`); mmi.service answers taken note of."""
        replies: list[tuple[str, Frames]] = []
        failed: list[tuple[str, str, FailureReport | None]] = []
        trims: list[tuple[str, int]] = []
        debug = log.isEnabledFor(logging.DEBUG)  # per request below: asked once
        for completion in completions:
            tag = completion.tag
            if isinstance(tag, PresenceCheck):
                absent = self.presence.absent(tag.service)
                if self.presence.answer(tag.service, completion.reply, now):
                    self.candidates.add(tag.service)
                    if absent:  # workers again after none: what waited goes out as they answer
                        self.windows.restart(tag.service, now, room=START,
                                             in_flight=self.in_flight[tag.service])
                continue
            if not isinstance(tag, Forwarded):
                log.error("completion with a foreign tag %r dropped", tag)
                continue
            self.in_flight[tag.service] -= 1
            if completion.reply is None:
                self._attempt_ended(tag.request_id)
                self.presence.forget(tag.service)
                self.windows.failed(tag.service, tag.sent, now)
                failed.append((tag.request_id, tag.service, _refusal(completion.error)))
                continue
            self.windows.answered(tag.service, tag.sent, now)
            # A handler that raised after streaming parts: its report is the FINAL alone.
            final = (completion.reply[completion.final_from:] if completion.final_from
                     else completion.reply)
            if (report := parse_failure(final)) is not None:
                self._attempt_ended(tag.request_id)
                failed.append((tag.request_id, tag.service, report))
            else:
                replies.append((tag.request_id, completion.reply))
                if (trim := self._streamed_end(completion, tag.request_id, parts)) is not None:
                    trims.append(trim)
                if debug:
                    log.debug("request %s answered", tag.request_id,
                              extra=about(tag.request_id, tag.service))
        return replies, failed, trims

    @property
    def limit_until(self) -> float | None:
        """When a service held back by its rate limit (titanic.store.limits) may claim again
        (None: none is)."""
        return min(self._rate_waits.values(), default=None)

    def _claim_plan(self, now: float) -> dict[str, int]:
        """How many due requests to claim per service: what in-flight room allows (the
        service's window, titanic.dispatch.in_flight), for the services that may have due
        requests and have workers (asking mmi.service if stale)."""
        for service, until in list(self._rate_waits.items()):
            if now >= until:  # its next token has come: claim it again
                del self._rate_waits[service]
                self.candidates.add(service)
        plan: dict[str, int] = {}
        planned = len(self._unsent)  # kept for the next submission: their slots are taken
        for service in list(self.candidates):
            window = self.windows.limit(service)
            if self.in_flight[service] >= window:
                continue
            if not self.presence.has_workers(service, now, self.transport, reserved=planned):
                continue  # looked at again when mmi answers, or at the next survey
            # Asked after has_workers(), which may have taken a slot for an mmi question.
            room = min(self.transport.free_slots - planned, window - self.in_flight[service])
            if room > 0:
                plan[service] = room
                planned += room
        return plan

    def _send_claimed(self, result: Exchange, plan: dict[str, int], now: float, *,
                      hold_until: float | None = None) -> bool:
        """Forward what was claimed, or keep it for the next turn that stores a submission,
        until `hold_until` at the latest (forward_linger); True if a service filled its room
        (more may be due)."""
        claimed = Counter(delivery.service for delivery in result.claimed)
        self.in_flight.update(claimed)  # kept or sent, their room is taken from now on
        if hold_until is not None and result.claimed:
            self._unsent.extend(result.claimed)
            self.stats.forwards_kept += len(result.claimed)
            if self.forward_until is None:
                self.forward_until = hold_until
        else:
            self._send(result.claimed, now)
        more = False
        for service, room in plan.items():
            if service in result.waits:  # its rate held it back: asked again when a token comes
                self.candidates.discard(service)
                self._rate_waits[service] = now + result.waits[service]
            elif claimed[service] < room:
                self.candidates.discard(service)  # nothing more due there for now
            else:
                more = True
        return more

    def _send_unsent(self, now: float) -> None:
        """Send what turns of requests arriving back to back claimed (in flight already)."""
        unsent, self._unsent, self.forward_until = self._unsent, [], None
        self._send(unsent, now)

    def _send(self, deliveries: Sequence[Delivery], now: float) -> None:
        debug = log.isEnabledFor(logging.DEBUG)
        for delivery in deliveries:
            # A task call carries its UUID, so that its worker can ask whether it was cancelled.
            self.transport.send(delivery.service,
                                tsp.task_call_with_id(delivery.request, delivery.id),
                                Forwarded(delivery.id, delivery.service, now))
            if debug:
                log.debug("request %s sent to %r (attempt %d)", delivery.id, delivery.service,
                          delivery.attempts, extra=about(delivery.id, delivery.service))
        self.stats.dispatched += len(deliveries)

    def _retry(self, request_id: str, service: str, report: FailureReport | None) -> None:
        """After a timeout (no report) or a worker's failure report: retry later, or fail."""
        s = self.settings
        if report is None:
            error = shown = f"no reply from {service!r} within {s.request_timeout:g} s"
        else:  # stored with the traceback after its first line, logged as that line
            error, shown = report.last_error, report.error
        if report is not None and report.permanent:
            status = RequestStatus.FAILED if self.store.fail(request_id, error) else None
        else:
            status = self.store.retry_later(request_id, error, max_attempts=s.max_attempts,
                                            backoff=s.backoff, backoff_max=s.backoff_max)
        if status is RequestStatus.FAILED:
            self._finished.append(request_id)
            self.stats.failed += 1
            log.warning("request %s failed for good: %s", request_id, shown,
                        extra=about(request_id, service))
        elif status is RequestStatus.PENDING:
            self.stats.retried += 1
            log.info("request %s will be retried: %s", request_id, shown,
                     extra=about(request_id, service))

    # -- between turns --------------------------------------------------------------------------

    def guarded(self, action: Callable[[], object]) -> None:
        """Run a store action; a store error is logged and counted, and the dispatcher goes on."""
        try:
            action()
        except StoreError as exc:
            self._count_store_error()
            log.error("store error: %s", exc)

    def _count_store_error(self) -> None:
        with self._errors_lock:
            self.stats.store_errors += 1

    def survey(self) -> None:
        """Look at the store itself for services with due requests (retries that came due,
        requests stored by other processes), and note when the earliest of those due later
        (scheduled ones, retries after their backoff) is due: the loop surveys again then."""
        self.due_until = None  # not again before the next survey unless it says when
        self.guarded(self._survey)

    def _note_scheduled(self, new: Sequence[NewRequest]) -> None:
        """Survey again when the earliest of these requests given a later time comes due."""
        times = [request.not_before for request in new if request.not_before is not None]
        if not times:
            return
        wall = datetime.now(UTC)
        later = [moment for moment in times if moment > wall]
        if later:
            until = time.monotonic() + (min(later) - wall).total_seconds()
            self.due_until = until if self.due_until is None else min(self.due_until, until)

    def _survey(self) -> None:
        earliest = self.store.earliest_due()
        wall, now = datetime.now(UTC), time.monotonic()
        self.candidates.update(service for service, due in earliest.items() if due <= wall)
        later = [due for due in earliest.values() if due > wall]
        self.due_until = now + (min(later) - wall).total_seconds() if later else None

    def release_stale(self) -> None:
        """Requests whose lease ran out (their dispatcher died) become pending again."""
        self.guarded(self._release_stale)

    def clean_up(self) -> None:
        """Expire requests never delivered, purge finished ones past their time."""
        self.guarded(self._clean_up)

    def release_unanswered(self, tags: Iterable[Hashable]) -> None:
        """At shutdown: the forwarded requests still awaiting a reply go back to pending."""
        for tag in tags:
            if isinstance(tag, Forwarded):
                self.guarded(partial(self._release, tag.request_id))

    def _release(self, request_id: str) -> None:
        if self.store.release(request_id):
            self.stats.released += 1
            log.info("request %s released at shutdown", request_id, extra=about(request_id))

    def _release_stale(self) -> None:
        released = self.store.release_stale()
        if released:
            self.stats.released += released
            log.warning("%d request(s) whose lease ran out are pending again", released)

    def _clean_up(self) -> None:
        expired = self.store.expire(pending_ttl=self.settings.pending_ttl)
        purged = self.store.purge(reply_ttl=self.settings.reply_ttl)
        self.stats.expired += expired
        self.stats.purged += purged
        if expired or purged:
            log.info("expired %d undelivered request(s), purged %d finished", expired, purged)
