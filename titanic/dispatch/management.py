"""The dispatcher's management service, `titanic.manage`: the store's view and bulk actions.

Clients (`titanic info`, `retry`, `purge`, the dashboard) reach it through the broker like any
MDP service, so they need no database credentials. The wire form is in titanic.protocol.manage;
here each command becomes one store call, and `ManagementService.handle` is the one place every
management request passes, where it may be refused. With `admin_only` (a dispatcher told who
calls, that is with CURVE) only callers with an admin key (the broker's --curve-admin) are served.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from titanic.errors import InvalidRequestError, ProtocolError, StoreError
from titanic.protocol.identity import Caller
from titanic.protocol.manage import (
    Command,
    build_refusal,
    build_reply,
    parse_request,
)
from titanic.protocol.mdp import Frames
from titanic.protocol.tsp import Status
from titanic.store import (
    FINISHED,
    REQUEUABLE,
    RequestStatus,
    ServiceSummary,
    Store,
    StoredRequest,
)

log = logging.getLogger("titanic.dispatcher")

#: Completions per second are counted over this many seconds unless asked otherwise.
RATE_WINDOW_S = 60.0
#: Most failed requests one `failed` answer lists.
MAX_LISTED = 500

Describe = Callable[[], dict[str, Any]]


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _argument(arguments: dict[str, Any], name: str, kind: type | tuple[type, ...],
              default: Any) -> Any:
    value = arguments.get(name, default)
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool)
                              and kind is not bool)):
        raise ProtocolError(f"argument {name!r} has the wrong type")
    return value


def _state(arguments: dict[str, Any], default: RequestStatus,
           allowed: Sequence[RequestStatus]) -> RequestStatus:
    name = _argument(arguments, "state", str, default.value)
    try:
        state = RequestStatus(name)
    except ValueError:
        raise ProtocolError(f"unknown state {name!r}") from None
    if state not in allowed:
        raise ProtocolError(f"state must be one of {', '.join(s.value for s in allowed)}")
    return state


def _seconds(arguments: dict[str, Any], name: str, default: float) -> float:
    value = float(_argument(arguments, name, (int, float), default))
    if not 0 <= value < float("inf"):
        raise ProtocolError(f"argument {name!r} must be a number of seconds, 0 or more")
    return value


def summary_row(summary: ServiceSummary, now: datetime, window: float) -> dict[str, Any]:
    """One service's line of `info`: counts by state, the oldest pending request's age in
    seconds, and completions per second over the window."""
    row: dict[str, Any] = {"service": summary.service}
    row.update(summary.shown_counts())
    oldest = summary.oldest_pending
    row["oldest_pending_age_s"] = (None if oldest is None
                                   else max(0.0, (now - oldest).total_seconds()))
    row["completed_per_s"] = summary.completed_since / window
    return row


def request_row(request: StoredRequest) -> dict[str, Any]:
    """A stored request as `failed` lists it (no bodies): its last error's first line, and
    the traceback its worker sent (None without one)."""
    error, _, traceback = (request.last_error or "").partition("\n")
    return {"uuid": request.id, "service": request.service, "state": request.status.value,
            "attempts": request.attempts, "created_at": _when(request.created_at),
            "completed_at": _when(request.completed_at),
            "last_error": error if request.last_error is not None else None,
            "traceback": traceback or None}


def process_facts(instance: str, version: str, started: float) -> dict[str, Any]:
    """Which daemon answers: its instance id (one per daemon object), version, host, pid and
    uptime."""
    return {"instance": instance, "version": version, "host": socket.gethostname(),
            "pid": os.getpid(), "uptime_s": round(time.time() - started, 3)}


class ManagementService:
    """Answers titanic.manage requests from a store; `describe` says which dispatcher answers."""

    def __init__(self, store: Store, describe: Describe, *, admin_only: bool = False) -> None:
        self.store = store
        self._describe = describe
        self.admin_only = admin_only
        self.refused = 0

    def handle_batch(self, bodies: Sequence[Frames],
                     callers: Sequence[Caller | None] = ()) -> list[Frames]:
        """One reply per request body (a WorkerPool batch handler)."""
        callers = callers or [None] * len(bodies)
        return [self.handle(body, caller) for body, caller in zip(bodies, callers, strict=True)]

    def handle(self, body: Frames, caller: Caller | None = None) -> Frames:
        """Answer one request: every management request passes here, so authorising one
        (which keys may list, retry or purge) belongs here too."""
        if self.admin_only and (caller is None or not caller.admin):
            self.refused += 1
            return build_refusal(Status.UNKNOWN, "refused: titanic.manage serves admin keys only "
                                 "(the broker's --curve-admin folder)")
        try:
            command, arguments = parse_request(body)
            return build_reply(self._run(command, arguments))
        except (ProtocolError, InvalidRequestError) as exc:
            return build_refusal(Status.UNKNOWN, f"bad request: {exc}")
        except StoreError as exc:
            log.error("store error: %s", exc)
            return build_refusal(Status.ERROR, f"store error: {exc}")

    def _run(self, command: Command, arguments: dict[str, Any]) -> dict[str, Any]:
        if command is Command.INFO:
            return self.info(_seconds(arguments, "window_s", RATE_WINDOW_S) or RATE_WINDOW_S)
        if command is Command.DESCRIBE:
            return {"dispatcher": self._describe()}
        service = _argument(arguments, "service", str, None) or None
        if command is Command.FAILED:
            limit = _argument(arguments, "limit", int, 100)
            return self.failed(_state(arguments, RequestStatus.FAILED, REQUEUABLE), service,
                               max(1, min(MAX_LISTED, limit)))
        dry_run = bool(_argument(arguments, "dry_run", bool, False))
        if command is Command.RETRY:
            request_id = _argument(arguments, "uuid", str, None)
            if request_id is not None:
                return {"count": int(self.store.requeue(request_id)), "dry_run": False}
            state = _state(arguments, RequestStatus.FAILED, REQUEUABLE)
            return self.retry(state, service, dry_run)
        state = _state(arguments, RequestStatus.DONE, FINISHED)
        return self.purge(state, _seconds(arguments, "older_than_s", 0.0), service, dry_run)

    def info(self, window: float) -> dict[str, Any]:
        """Per service: counts by state, oldest pending age, completions per second, limits."""
        now = datetime.now(UTC)
        summaries = self.store.summary(since=now - timedelta(seconds=window))
        limits = {limit.service: limit for limit in self.store.limits()}
        rows = [summary_row(summary, now, window) for summary in summaries]
        for row in rows:  # the limits shared by every dispatcher of the store (none: None)
            limit = limits.get(row["service"])
            row["max_in_flight"] = None if limit is None else limit.max_in_flight
            row["rate_per_s"] = None if limit is None else limit.rate
        return {"time": now.isoformat(), "window_s": window, "dispatcher": self._describe(),
                "services": rows}

    def failed(self, state: RequestStatus, service: str | None, limit: int) -> dict[str, Any]:
        """The requests in a failed or expired state, oldest first, with their last error."""
        found = self.store.list(service=service, status=state, limit=limit)
        return {"requests": [request_row(request) for request in found]}

    def retry(self, state: RequestStatus, service: str | None, dry_run: bool) -> dict[str, Any]:
        """Every request in `state` (of one service or all) pending again."""
        count = self.store.requeue_all(state, service=service, dry_run=dry_run)
        if not dry_run:
            log.info("%d %s request(s)%s pending again", count, state.value,
                     f" of {service!r}" if service else "")
        return {"count": count, "dry_run": dry_run}

    def purge(self, state: RequestStatus, older_than: float, service: str | None,
              dry_run: bool) -> dict[str, Any]:
        """Delete the requests in a finished `state` that finished over `older_than` s ago."""
        count = self.store.purge_finished(state, older_than=older_than, service=service,
                                          dry_run=dry_run)
        if not dry_run:
            log.info("purged %d %s request(s)%s finished over %g s ago", count, state.value,
                     f" of {service!r}" if service else "", older_than)
        return {"count": count, "dry_run": dry_run}
