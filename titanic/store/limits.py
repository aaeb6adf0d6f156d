"""SqlStore's limits per service: kept in the store, honoured by every dispatcher on it.

A limited service is claimed in a transaction of its own: its limit row is locked first
(PostgreSQL: SELECT ... FOR UPDATE; SQLite: the immediate transaction holds the write lock),
so that claims of that service by any dispatcher take turns; then, in statements that see what
the others committed, its dispatched requests are counted (max in flight), the token bucket
refilled for the time passed (rate), and at most what both allow claimed, the tokens spent
written back. Which services are limited each store reads when opened and again every
LIMITS_REFRESH_S, within a dispatcher's survey of the store or a turn that claims (no
transaction is added for it): a limit set or cleared elsewhere is honoured by every dispatcher
from its next survey, within about a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from titanic.store import dialect
from titanic.store.crypto import PlainBodies
from titanic.store.hot import HotStatements
from titanic.store.models import limits_table as lim
from titanic.store.models import requests_table as t
from titanic.store.rows import DELIVERY_COLUMNS, aware_utc, naive_utc, utcnow
from titanic.store.types import (
    Delivery,
    RequestStatus,
    ServiceLimit,
    StoredRequest,
    check_limit,
)

T = TypeVar("T")

#: Seconds a dispatcher keeps the set of limited services before reading it again, within a
#: survey or a turn that claims.
LIMITS_REFRESH_S = 1.0
#: Seconds after which it is read in a transaction of its own before a claim (a store that
#: neither surveys nor claims for that long).
LIMITS_STALE_S = 5.0
DISPATCHED = RequestStatus.DISPATCHED.value


class SqlLimits:
    """The limits' queries and claims, mixed into SqlStore (which provides `_transaction`,
    `_hot` and `bodies`)."""

    if TYPE_CHECKING:
        _hot: HotStatements
        bodies: PlainBodies
        engine: Engine

        def _transaction(self, work: Callable[[Connection], T], *, write: bool = True,
                         durable: bool = True) -> T: ...

    _limited_lock = threading.Lock()
    _limited: frozenset[str] = frozenset()
    _limited_read = float("-inf")

    # -- the operators' side ------------------------------------------------------------------

    def set_limit(self, service: str, *, max_in_flight: int | None = None,
                  rate: float | None = None, burst: float | None = None) -> ServiceLimit:
        """Limit a service for every dispatcher of the store (see Store.set_limit)."""
        size = check_limit(max_in_flight, rate, burst)
        moment = utcnow()
        values = {"max_in_flight": max_in_flight, "rate": rate, "burst": size, "tokens": size,
                  "refilled_at": moment}

        def work(conn: Connection) -> None:
            found = conn.execute(dialect.lock_row(
                select(lim.c.service).where(lim.c.service == service), conn)).first()
            if found is None:
                conn.execute(insert(lim).values(service=service, **values))
            else:
                conn.execute(update(lim).where(lim.c.service == service).values(**values))

        self._transaction(work)
        with self._limited_lock:
            self._limited = self._limited | {service}
        return ServiceLimit(service, max_in_flight, rate, size, size, aware_utc(moment) or
                            _never())

    def clear_limit(self, service: str) -> bool:
        """Remove a service's limit; False if it had none."""
        statement = delete(lim).where(lim.c.service == service)
        removed = self._transaction(lambda conn: conn.execute(statement).rowcount == 1)
        with self._limited_lock:
            self._limited = self._limited - {service}
        return removed

    def limits(self) -> list[ServiceLimit]:
        """Every service's limit, by name."""
        statement = select(lim).order_by(lim.c.service)
        return self._transaction(lambda conn: [_limit(row) for row in conn.execute(statement)],
                                 write=False)

    # -- the dispatchers' side ----------------------------------------------------------------

    def limited_services(self, *, within: float = LIMITS_REFRESH_S) -> frozenset[str]:
        """The services with a limit, read again (in a transaction of its own) when last read
        more than `within` seconds ago."""
        if not self.limits_stale(within):
            return self._limited
        statement = select(lim.c.service)
        self.note_limited(self._transaction(lambda conn: list(conn.execute(statement).scalars()),
                                            write=False))
        return self._limited

    def prime_limits(self) -> None:
        """Read the limited services once, on a connection of its own (not this thread's:
        the store opens those when first used), before the first claim."""
        try:
            with self.engine.connect() as conn:
                self.note_limited(conn.execute(select(lim.c.service)).scalars().all())
        except SQLAlchemyError:
            pass  # read again before the first claim that needs them

    def known_limited(self) -> frozenset[str]:
        """The limited services as last read: in a transaction of its own only when never
        read or last read more than LIMITS_STALE_S ago (a dispatcher reads them in its surveys
        and in its turns that claim, see limits_stale)."""
        return self.limited_services(within=LIMITS_STALE_S)

    def limits_stale(self, within: float = LIMITS_REFRESH_S) -> bool:
        """Whether the limited services are due to be read again: a turn that claims reads
        them in its own transaction then (pipeline.Turn.read_limits)."""
        with self._limited_lock:
            return time.monotonic() - self._limited_read >= within

    def note_limited(self, names: Iterable[str]) -> None:
        """The limited services as just read."""
        with self._limited_lock:
            self._limited, self._limited_read = frozenset(names), time.monotonic()

    def claim_limited(self, service: str, room: int, lease_until: datetime, now: datetime
                      ) -> tuple[list[Delivery], float | None]:
        """Claim up to `room` due requests of a limited service, within its limits, in a
        transaction of its own: the deliveries, and (when its rate held the claim back) the
        seconds until it may claim again."""
        hot = self._hot
        found: list[Delivery] = []

        def claim(conn: Connection, allowed: int) -> int:
            sql, params = hot.claim_statement([service], allowed, lease_until, now,
                                              DELIVERY_COLUMNS)
            deliveries, unopenable = hot.open_deliveries(conn.exec_driver_sql(sql, params).all())
            for request_id, error in unopenable:
                conn.exec_driver_sql(hot.fail_sql, hot.fail_params(request_id, error, now))
            found.extend(deliveries)
            return len(deliveries) + len(unopenable)

        wait = self._transaction(lambda conn: _within_limit(conn, service, room, now, claim),
                                 durable=False)
        return found, wait

    def claim_limited_records(self, service: str, room: int, lease_until: datetime,
                              now: datetime) -> list[StoredRequest]:
        """claim_limited for Store.claim_due: the claimed requests as records."""
        found: list[StoredRequest] = []

        def claim(conn: Connection, allowed: int) -> int:
            found.extend(self._hot.claim(conn, [service], allowed, lease_until, now))
            return len(found)

        self._transaction(lambda conn: _within_limit(conn, service, room, now, claim),
                          durable=False)
        return found


def _within_limit(conn: Connection, service: str, room: int, now: datetime,
                  claim: Callable[[Connection, int], int]) -> float | None:
    """In an open transaction: lock the service's limit row, claim (by `claim`, given how
    many it may take) what the limit allows, spend the tokens; the seconds until it may claim
    again when the rate held it back (None otherwise)."""
    row = conn.execute(dialect.lock_row(select(lim).where(lim.c.service == service),
                                        conn)).first()
    if row is None:  # cleared meanwhile
        claim(conn, room)
        return None
    limit = _limit(row)
    in_flight = 0
    if limit.max_in_flight is not None:
        # A statement of its own: under READ COMMITTED it sees what other dispatchers
        # committed while this one waited for the lock.
        in_flight = int(conn.execute(select(func.count()).select_from(t).where(
            t.c.status == DISPATCHED, t.c.service == service)).scalar_one())
    moment = aware_utc(naive_utc(now)) or _never()
    allowed, tokens = limit.allowance(room, in_flight, moment)
    taken = claim(conn, allowed) if allowed > 0 else 0
    if limit.rate is None:
        return None
    left = tokens - taken
    conn.execute(update(lim).where(lim.c.service == service).values(
        tokens=left, refilled_at=naive_utc(now)))
    # Held back by the rate alone, with more perhaps due: worth asking again when a token
    # comes (a full max in flight waits for a reply instead; nothing more due, for a request).
    held_back = taken == allowed < room and (limit.max_in_flight is None
                                             or in_flight + taken < limit.max_in_flight)
    return limit.wait_after(left) if held_back else None


def _limit(row: Any) -> ServiceLimit:
    return ServiceLimit(row.service, row.max_in_flight, row.rate, float(row.burst),
                        float(row.tokens), aware_utc(row.refilled_at) or _never())


def _never() -> datetime:
    raise AssertionError("a stored time is never None here")
