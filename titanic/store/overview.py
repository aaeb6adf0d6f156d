"""SqlStore's queries for operators: the summary per service that `titanic info` shows, and
the bulk retry and purge of `titanic retry --state` and `titanic purge`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, and_, delete, func, not_, select, update

from titanic.store.models import reply_parts_table as parts
from titanic.store.models import requests_table as t
from titanic.store.rows import aware_utc, naive_utc, utcnow
from titanic.store.types import (
    FINISHED,
    REQUEUABLE,
    RequestStatus,
    ServiceSummary,
    check_bulk_state,
)

T = TypeVar("T")

PENDING = RequestStatus.PENDING.value


def delete_orphan_parts(conn: Connection, deleted: int) -> int:
    """After `deleted` requests were deleted in this transaction: delete the parts of streamed
    replies whose request is gone. Returns `deleted`."""
    if deleted:
        conn.execute(delete(parts).where(
            ~select(t.c.id).where(t.c.id == parts.c.request_id).exists()))
    return deleted


class SqlOverview:
    """The operators' queries, mixed into SqlStore (which provides `_transaction`)."""

    if TYPE_CHECKING:
        def _transaction(self, work: Callable[[Connection], T], *, write: bool = True,
                         durable: bool = True) -> T: ...

    def summary(self, *, since: datetime) -> list[ServiceSummary]:
        """Per service, by name: counts by state, the oldest pending request's submission
        time, and the requests completed since `since`."""
        counts = select(t.c.service, t.c.status, func.count()).group_by(t.c.service, t.c.status)
        waiting = and_(t.c.status == PENDING, t.c.attempts == 0, t.c.due_at > utcnow())
        oldest = (select(t.c.service, func.min(t.c.created_at))
                  .where(t.c.status == PENDING, not_(waiting)).group_by(t.c.service))
        scheduled = select(t.c.service, func.count()).where(waiting).group_by(t.c.service)
        recent = (select(t.c.service, func.count())
                  .where(t.c.status == RequestStatus.DONE.value,
                         t.c.completed_at >= naive_utc(since))
                  .group_by(t.c.service))

        def read(conn: Connection) -> list[ServiceSummary]:
            by_service: dict[str, dict[RequestStatus, int]] = {}
            for service, status, count in conn.execute(counts):
                by_service.setdefault(service, {})[RequestStatus(status)] = count
            first = {service: aware_utc(moment) for service, moment in conn.execute(oldest)}
            # not dict(result): a Result has keys(), so dict() would take it for a mapping
            done = {service: count for service, count in conn.execute(recent)}  # noqa: C416
            later = {service: count for service, count in conn.execute(scheduled)}  # noqa: C416
            return [ServiceSummary(service, by_service[service], first.get(service),
                                   done.get(service, 0), later.get(service, 0))
                    for service in sorted(by_service)]

        return self._transaction(read, write=False)

    def requeue_all(self, status: RequestStatus, *, service: str | None = None,
                    dry_run: bool = False) -> int:
        """Every failed (or expired) request, of one service or all, pending again with its
        attempts counted afresh; returns how many (with dry_run: would be)."""
        check_bulk_state(status, REQUEUABLE, "retry")
        where = [t.c.status == status.value] + ([t.c.service == service] if service else [])
        if dry_run:
            return self._count(where)
        statement = update(t).where(*where).values(status=PENDING, due_at=utcnow(), attempts=0,
                                                   completed_at=None, lease_until=None)
        return self._transaction(lambda conn: conn.execute(statement).rowcount)

    def purge_finished(self, status: RequestStatus, *, older_than: float,
                       service: str | None = None, dry_run: bool = False,
                       now: datetime | None = None) -> int:
        """Delete the requests in a finished `status` that finished more than `older_than`
        seconds ago, of one service or all; returns how many (with dry_run: would be)."""
        check_bulk_state(status, FINISHED, "purge")
        cutoff = (naive_utc(now) or utcnow()) - timedelta(seconds=older_than)
        where = [t.c.status == status.value, t.c.completed_at < cutoff]
        where += [t.c.service == service] if service else []
        if dry_run:
            return self._count(where)
        statement = delete(t).where(*where)
        return self._transaction(lambda conn: delete_orphan_parts(
            conn, conn.execute(statement).rowcount))

    def _count(self, where: list[Any]) -> int:
        statement = select(func.count()).select_from(t).where(*where)
        return int(self._transaction(lambda conn: conn.execute(statement).scalar_one(),
                                     write=False))
