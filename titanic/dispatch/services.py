"""The 9/TSP services as pure handlers: (store, request bodies) -> reply bodies.

titanic.reply and titanic.close are answered here. A titanic.request batch is checked and its
answers written here (`check_requests`, `acknowledge`, `refuse_for_store_error`,
`refuse_over_owner_limit`), but stored by the dispatcher's planner (`titanic.dispatch.planner`),
in the same transaction as the turn's replies and claims.

Status frames are the three digits alone; an answer other than 200 carries its text in the
frame after the status (clients that compare whole status frames, as the guide's ticlient does,
see the code alone), and titanic's own client reads that text to tell apart the ways a request
can end:

    titanic.request  200, <uuid> | 400, <why the request is refused> | 503, <a key's limit>
                     | 500, <store error>
      (batch form)   200, <uuid>, <uuid>... (one per request, in order) | 400 | 503 | 500
    titanic.reply    200, <reply frames...> | 300, pending | 400, unknown | 400, failed: <error>
                     | 400, expired: <why> | 500, <store error>
    titanic.close    200 (unknown and malformed UUIDs too) | 500, <store error>
    follow           200, done | pending, <part head>, <frames>... | as titanic.reply's 400, 500
      (titanic.wait's form `uuid, ms, after`: the parts of a streamed reply after `after`)
    titanic.cancel   200, <the state it was in> | 400, unknown | 500, <store error>
    titanic.cancelled  200, yes | 200, no | 500, <store error>

A titanic.request may carry an idempotency key in front, `"", key, service, body...` (see
titanic.protocol.tsp.split_request): a key already stored answers the stored request's UUID.
The batch form (`"", "", service, head, frames..., head, frames...`, titanic.protocol.tsp.
split_batch) holds many requests for one service, each with its own key or none: all are stored
in one transaction or none is (a malformed request, a body over max_request_bytes for the whole
message, a key's limit: the whole batch is refused), and the one answer lists their UUIDs. The
options form (`"", "", "", options, key or "", service, body...`) also carries a time before
which the request is not sent and a priority (titanic.protocol.tsp.RequestOptions).

Ownership: when the broker tells who sent a request (a `Caller`, see titanic.protocol.identity),
a stored request belongs to the key that submitted it. `titanic.reply` and `titanic.close` from
another key are answered exactly as for an unknown UUID; an admin key may see every request. A
request stored without an owner (no CURVE) is anyone's, and a caller without an identity owns
nothing. An owner's idempotency keys are its own: another key using the same key stores a
request of its own (see _owned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from titanic.errors import InvalidRequestError, ProtocolError, StoreError
from titanic.logs import about
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Frames
from titanic.protocol.tsp import (
    CANCELLED_PREFIX,
    EXPIRED_PREFIX,
    FAILED_PREFIX,
    PENDING_TEXT,
    UNKNOWN_TEXT,
    Status,
    follow_answer,
    is_batch,
    parse_uuid,
    split_batch,
    split_request_options,
)
from titanic.store import NewRequest, RequestStatus, Store, check_new_request

log = logging.getLogger("titanic.dispatcher")

_PENDING = Status.PENDING.answer(PENDING_TEXT)
_UNKNOWN = Status.UNKNOWN.answer(UNKNOWN_TEXT)
_OK = Status.OK.frame()


def _store_error(exc: StoreError) -> Frames:
    log.error("store error: %s", exc)
    return Status.ERROR.answer(f"store error: {exc}")


def _parse_new_request(body: Frames) -> NewRequest:
    """[service, frames...] (or the keyed form) as a NewRequest; ProtocolError if the service or
    key frame is unusable."""
    key, options, body = split_request_options(body)
    if not body or not body[0]:
        raise ProtocolError("titanic.request needs a service name frame")
    try:
        service = body[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("the service name is not UTF-8") from exc
    not_before = None
    if options.not_before_ms is not None:
        try:
            not_before = datetime.fromtimestamp(options.not_before_ms / 1000, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ProtocolError("the titanic.request option not_before is out of range") from exc
    return NewRequest(service=service, frames=tuple(body[1:]), idempotency_key=key,
                      not_before=not_before, priority=options.priority)


def _parse_batch(body: Frames, max_request_bytes: int) -> list[NewRequest]:
    """A batch-form body as its NewRequests, each checked; ProtocolError or InvalidRequestError
    (naming the request) if one is unusable or all together are over `max_request_bytes`."""
    service_frame, items = split_batch(body)
    try:
        service = service_frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("the service name is not UTF-8") from exc
    size = sum(len(frame) for item in items for frame in item.frames)
    if size > max_request_bytes:
        raise InvalidRequestError(f"the batch's request bodies come to {size} bytes, over the "
                                  f"limit of {max_request_bytes} bytes for one message")
    requests = []
    for number, item in enumerate(items, 1):
        request = NewRequest(service=service, frames=item.frames, idempotency_key=item.key)
        try:
            check_new_request(request, max_request_bytes)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"batch request {number}: {exc}") from None
        requests.append(request)
    return requests


def may_see(owner: str | None, caller: Caller | None) -> bool:
    """Whether a caller may fetch or close a request stored with this owner."""
    if owner is None:
        return True
    return caller is not None and (caller.admin or caller.key == owner)


def check_requests(bodies: Sequence[Frames], max_request_bytes: int,
                   callers: Sequence[Caller | None] | None = None
                   ) -> tuple[list[tuple[int, NewRequest]], list[Frames | None]]:
    """titanic.request bodies checked: the valid requests with the index of their body (owned
    by its caller, if known; a batch gives one entry per request, all with its index), and an
    answer list in which every refused body already has its `400 bad request: ...` (the
    others are None)."""
    answers: list[Frames | None] = [None] * len(bodies)
    accepted: list[tuple[int, NewRequest]] = []
    for index, body in enumerate(bodies):
        try:
            if is_batch(body):
                requests = _parse_batch(body, max_request_bytes)
            else:
                requests = [_parse_new_request(body)]
                check_new_request(requests[0], max_request_bytes)
        except (ProtocolError, InvalidRequestError) as exc:
            answers[index] = Status.UNKNOWN.answer(f"bad request: {exc}")
            continue
        caller = callers[index] if callers is not None else None
        accepted.extend((index, request if caller is None else _owned(request, caller.key))
                        for request in requests)
    return accepted, answers


def _owned(request: NewRequest, owner: str) -> NewRequest:
    """The request owned by `owner`, its idempotency key (if any) prefixed with the owner so
    that keys of different owners never meet: one key cannot learn or block another's request
    by guessing its idempotency key. A key too long for the column with the prefix is hashed."""
    key = request.idempotency_key
    if key is not None:
        key = f"{owner} {key}"
        if len(key) > 255:
            key = f"{owner} sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return dataclasses.replace(request, owner=owner, idempotency_key=key)


def refuse_over_owner_limit(answers: list[Frames | None],
                            accepted: list[tuple[int, NewRequest]], stored: dict[str, int],
                            limit: int) -> list[tuple[int, NewRequest]]:
    """The accepted requests that keep each owner within `limit` unfinished requests (given
    what they have `stored`); the others are answered `503 ...` here, a batch as a whole."""
    bodies: dict[int, list[NewRequest]] = {}
    for index, request in accepted:
        bodies.setdefault(index, []).append(request)
    counts = dict(stored)
    kept: list[tuple[int, NewRequest]] = []
    for index, requests in bodies.items():
        wanted = Counter(request.owner for request in requests if request.owner is not None)
        if any(counts.get(owner, 0) + number > limit for owner, number in wanted.items()):
            answers[index] = Status.OVER_LIMIT.answer(
                f"too many stored requests for this key (limit {limit}): retry later")
            continue
        for owner, number in wanted.items():
            counts[owner] = counts.get(owner, 0) + number
        kept.extend((index, request) for request in requests)
    return kept


def acknowledge(answers: list[Frames | None], accepted: Sequence[tuple[int, NewRequest]],
                ids: Sequence[str]) -> None:
    """Fill in `200 <uuid>` for the stored requests (`200 <uuid> <uuid>...` for a batch)."""
    debug = log.isEnabledFor(logging.DEBUG)  # per request below: asked once
    for (index, request), request_id in zip(accepted, ids, strict=True):
        if debug:
            log.debug("request %s for %r stored", request_id, request.service,
                      extra=about(request_id, request.service))
        answer = answers[index]
        if answer is None:
            answers[index] = [_OK, request_id.encode()]
        else:
            answer.append(request_id.encode())


def refuse_for_store_error(answers: list[Frames | None],
                           accepted: Sequence[tuple[int, NewRequest]], exc: StoreError) -> None:
    """Fill in `500 store error: ...` for requests that could not be stored."""
    error = _store_error(exc)
    for index, _ in accepted:
        answers[index] = error


def handle_reply(store: Store, body: Frames, caller: Caller | None = None) -> Frames:
    """titanic.reply: the stored reply, or where the request stands (unknown to another key)."""
    try:
        request_id = parse_uuid(body[0]) if len(body) == 1 else ""
    except ProtocolError:
        request_id = ""
    if not request_id:
        return list(_UNKNOWN)
    try:
        stored = store.get(request_id)
    except InvalidRequestError:
        return list(_UNKNOWN)
    except StoreError as exc:
        return _store_error(exc)
    if stored is None or not may_see(stored.owner, caller):
        return list(_UNKNOWN)
    if stored.status is RequestStatus.DONE:
        return [_OK, *(stored.reply or ())]
    if stored.status is RequestStatus.FAILED:
        return Status.UNKNOWN.answer(FAILED_PREFIX + (stored.last_error or "no reason given"))
    if stored.status is RequestStatus.EXPIRED:
        return Status.UNKNOWN.answer(EXPIRED_PREFIX + (stored.last_error or "not delivered"))
    if stored.status is RequestStatus.CANCELLED:
        return Status.UNKNOWN.answer(CANCELLED_PREFIX + "cancelled by a client")
    return list(_PENDING)


def handle_follow(store: Store, uuid_frame: bytes, after: int,
                  caller: Caller | None = None) -> Frames:
    """The follow form of titanic.wait, answered now: the parts of the request's reply numbered
    after `after`, and whether it is done. A reply that did not stream (or whose stored parts
    are not the reply an attempt finished with) is one part, the whole reply."""
    current = handle_reply(store, [uuid_frame], caller)
    if current[0] not in (_OK, _PENDING[0]):
        return current
    request_id = parse_uuid(uuid_frame)  # handle_reply read it: a UUID
    try:
        if current[0] == _PENDING[0]:
            return follow_answer(False, store.parts_after(request_id, after))
        parts = store.parts_after(request_id, 0)
    except StoreError as exc:
        return _store_error(exc)
    return follow_answer(True, [(seq, frames) for seq, frames in _whole(parts, current[1:])
                                if seq > after])


def _whole(parts: list[tuple[int, tuple[bytes, ...]]], reply: Frames
           ) -> list[tuple[int, tuple[bytes, ...]]]:
    """A done request's parts, checked against its reply (every part's frames joined): parts
    1 to n that begin it are kept and the rest of it is part n + 1 (its last PARTIALs were not
    stored: the dispatcher stopped); parts that do not (an earlier attempt's) give way to the
    whole reply as part 1, as does a reply that did not stream."""
    joined = [frame for _, frames in parts for frame in frames]
    if parts and joined == reply:
        return parts
    numbered = [seq for seq, _ in parts] == list(range(1, len(parts) + 1))
    if parts and numbered and reply[:len(joined)] == joined:
        return [*parts, (len(parts) + 1, tuple(reply[len(joined):]))]
    return [(1, tuple(reply))]


def _request_id(body: Frames) -> str:
    """The UUID of a one-frame body, or "" if it is not one."""
    try:
        return parse_uuid(body[0]) if len(body) == 1 else ""
    except ProtocolError:
        return ""


def handle_cancel(store: Store, body: Frames, caller: Caller | None = None) -> Frames:
    """titanic.cancel: cancel the request (a pending or scheduled one is never sent; a
    dispatched one's reply will be discarded); `200, <the state it was in>`, `400, unknown`
    (another key's request too)."""
    request_id = _request_id(body)
    if not request_id:
        return list(_UNKNOWN)
    owners = None if caller is not None and caller.admin else \
        (None, caller.key) if caller else (None,)
    try:
        was = store.cancel(request_id, owners=owners)
    except InvalidRequestError:
        return list(_UNKNOWN)
    except StoreError as exc:
        return _store_error(exc)
    if was is None:
        return list(_UNKNOWN)
    log.info("request %s cancelled (it was %s)", request_id, was, extra=about(request_id))
    return [_OK, was.encode()]


def handle_cancelled(store: Store, body: Frames, caller: Caller | None = None) -> Frames:
    """titanic.cancelled, asked by the worker running a request: `200, yes` if it was
    cancelled, `200, no` otherwise (unknown too: a UUID tells nothing more to whoever has it)."""
    request_id = _request_id(body)
    try:
        stored = store.get(request_id) if request_id else None
    except InvalidRequestError:
        stored = None
    except StoreError as exc:
        return _store_error(exc)
    cancelled = stored is not None and stored.status is RequestStatus.CANCELLED
    return [_OK, b"yes" if cancelled else b"no"]


def handle_close(store: Store, body: Frames, caller: Caller | None = None) -> Frames:
    """titanic.close: forget the request and its reply; 200 whether or not it existed (or
    belongs to another key, whose request stays)."""
    try:
        request_id = parse_uuid(body[0]) if len(body) == 1 else ""
    except ProtocolError:
        return [_OK]
    if not request_id:
        return [_OK]
    try:
        if caller is not None and caller.admin:
            store.close(request_id)
        else:
            store.close(request_id, owners=(None, caller.key) if caller else (None,))
    except InvalidRequestError:
        return [_OK]
    except StoreError as exc:
        return _store_error(exc)
    log.debug("request %s closed", request_id, extra=about(request_id))
    return [_OK]


def batch_of(handler: Callable[[Store, Frames, Caller | None], Frames],
             store: Store) -> Callable[[Sequence[Frames], Sequence[Caller | None]],
                                       list[Frames]]:
    """A one-at-a-time handler applied across a batch of bodies and their callers."""
    return lambda bodies, callers: [handler(store, body, caller)
                                    for body, caller in zip(bodies, callers, strict=True)]
