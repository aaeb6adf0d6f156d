"""The 9/TSP services as pure handlers: (store, request bodies) -> reply bodies.

Status frames are three digits and an optional text; clients look only at the digits, and
titanic's own client reads the text to tell apart the ways a request can end:

    titanic.request  200 <uuid> | 400 <why the request is refused> | 500 <store error>
    titanic.reply    200 <reply frames...> | 300 pending | 400 unknown | 400 failed: <error>
                     | 400 expired: <why> | 500 <store error>
    titanic.close    200 (unknown and malformed UUIDs too) | 500 <store error>

A titanic.request may carry an idempotency key in front, `"", key, service, body...` (see
titanic.protocol.tsp.split_request): a key already stored answers the stored request's UUID.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from titanic.errors import InvalidRequestError, ProtocolError, StoreError
from titanic.logs import about
from titanic.protocol.mdp import Frames
from titanic.protocol.tsp import Status, parse_uuid, split_request
from titanic.store import NewRequest, RequestStatus, Store, check_new_request

log = logging.getLogger(__name__)

UNKNOWN_TEXT = "unknown"
FAILED_PREFIX = "failed: "
EXPIRED_PREFIX = "expired: "

_PENDING = Status.PENDING.frame("pending")
_UNKNOWN = Status.UNKNOWN.frame(UNKNOWN_TEXT)
_OK = Status.OK.frame()


def _store_error(exc: StoreError) -> Frames:
    log.error("store error: %s", exc)
    return [Status.ERROR.frame(f"store error: {exc}")]


def _parse_new_request(body: Frames) -> NewRequest:
    """[service, frames...] (or the keyed form) as a NewRequest; ProtocolError if the service or
    key frame is unusable."""
    key, body = split_request(body)
    if not body or not body[0]:
        raise ProtocolError("titanic.request needs a service name frame")
    try:
        service = body[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("the service name is not UTF-8") from exc
    return NewRequest(service=service, frames=tuple(body[1:]), idempotency_key=key)


def check_requests(bodies: Sequence[Frames],
                   max_request_bytes: int) -> tuple[list[tuple[int, NewRequest]],
                                                    list[Frames | None]]:
    """titanic.request bodies checked: the valid ones with their index, and an answer list in
    which every refused one already has its `400 bad request: ...` (the others are None)."""
    answers: list[Frames | None] = [None] * len(bodies)
    accepted: list[tuple[int, NewRequest]] = []
    for index, body in enumerate(bodies):
        try:
            request = _parse_new_request(body)
            check_new_request(request, max_request_bytes)
        except (ProtocolError, InvalidRequestError) as exc:
            answers[index] = [Status.UNKNOWN.frame(f"bad request: {exc}")]
            continue
        accepted.append((index, request))
    return accepted, answers


def acknowledge(answers: list[Frames | None], accepted: Sequence[tuple[int, NewRequest]],
                ids: Sequence[str]) -> None:
    """Fill in `200 <uuid>` for the stored requests."""
    for (index, request), request_id in zip(accepted, ids, strict=True):
        log.debug("request %s for %r stored", request_id, request.service,
                  extra=about(request_id, request.service))
        answers[index] = [_OK, request_id.encode()]


def refuse_for_store_error(answers: list[Frames | None],
                           accepted: Sequence[tuple[int, NewRequest]], exc: StoreError) -> None:
    """Fill in `500 store error: ...` for requests that could not be stored."""
    error = _store_error(exc)
    for index, _ in accepted:
        answers[index] = error


def handle_requests(store: Store, bodies: Sequence[Frames]) -> list[Frames]:
    """titanic.request for a batch: every valid request stored in one transaction, then 200."""
    accepted, answers = check_requests(bodies, store.max_request_bytes)
    if accepted:
        try:
            ids = store.submit_many([request for _, request in accepted])
        except StoreError as exc:
            refuse_for_store_error(answers, accepted, exc)
        else:
            acknowledge(answers, accepted, ids)
    return [answer if answer is not None else [_UNKNOWN] for answer in answers]


def handle_reply(store: Store, body: Frames) -> Frames:
    """titanic.reply: the stored reply, or where the request stands."""
    try:
        request_id = parse_uuid(body[0]) if len(body) == 1 else ""
    except ProtocolError:
        request_id = ""
    if not request_id:
        return [_UNKNOWN]
    try:
        stored = store.get(request_id)
    except InvalidRequestError:
        return [_UNKNOWN]
    except StoreError as exc:
        return _store_error(exc)
    if stored is None:
        return [_UNKNOWN]
    if stored.status is RequestStatus.DONE:
        return [_OK, *(stored.reply or ())]
    if stored.status is RequestStatus.FAILED:
        return [Status.UNKNOWN.frame(FAILED_PREFIX + (stored.last_error or "no reason given"))]
    if stored.status is RequestStatus.EXPIRED:
        return [Status.UNKNOWN.frame(EXPIRED_PREFIX + (stored.last_error or "not delivered"))]
    return [_PENDING]


def handle_close(store: Store, body: Frames) -> Frames:
    """titanic.close: forget the request and its reply; 200 whether or not it existed."""
    try:
        request_id = parse_uuid(body[0]) if len(body) == 1 else ""
    except ProtocolError:
        return [_OK]
    if not request_id:
        return [_OK]
    try:
        store.close(request_id)
    except InvalidRequestError:
        return [_OK]
    except StoreError as exc:
        return _store_error(exc)
    log.debug("request %s closed", request_id, extra=about(request_id))
    return [_OK]


def batch_of(handler: Callable[[Store, Frames], Frames],
             store: Store) -> Callable[[Sequence[Frames]], list[Frames]]:
    """A one-at-a-time handler applied across a batch."""
    return lambda bodies: [handler(store, body) for body in bodies]
