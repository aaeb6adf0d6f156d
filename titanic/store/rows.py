"""A request row's codec: its column order, its values in each dialect's encoding, the row as
a StoredRequest, and the UTC times and UUID keys the store writes.

The database holds naive UTC times and UUID ids. Through SQLAlchemy Core the `Uuid` and
`DateTime` types hand back `uuid.UUID` and naive `datetime`; the hot path's driver SQL
(store.hot, store.pipeline) gets what the driver returns: the same from psycopg, text from
SQLite. Each encoding is one `*Values` class below, and every row becomes a record through
`record`, so both paths read and write the same rows the same way.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from titanic.store.crypto import REPLY, REQUEST, PlainBodies
from titanic.store.models import requests_table
from titanic.store.types import RequestStatus, StoredRequest, check_request_id

#: A request row's columns, in the model's (and the table's) order.
COLUMNS = tuple(column.name for column in requests_table.c)
TABLE = requests_table.name
_ORDER = ("id", "service", "request", "reply", "status", "attempts", "created_at", "due_at",
          "lease_until", "completed_at", "last_error", "deadline", "idempotency_key", "owner",
          "priority")
if COLUMNS != _ORDER:  # new_row and record read and write rows in this order
    raise RuntimeError(f"the requests table's columns are not in the order expected: {COLUMNS}")
(_ID, _SERVICE, _REQUEST, _REPLY, _STATUS, _ATTEMPTS, _CREATED_AT, _DUE_AT, _LEASE_UNTIL,
 _COMPLETED_AT, _LAST_ERROR, _DEADLINE, _IDEMPOTENCY_KEY, _OWNER, _PRIORITY) = range(len(_ORDER))
#: The columns a claim for sending returns (store.hot's deliveries).
DELIVERY_COLUMNS = ("id", "service", "request", "attempts", "priority")

_STATUSES = {status.value: status for status in RequestStatus}  # faster than RequestStatus(x)
_PENDING = RequestStatus.PENDING.value
_DISPATCHED = RequestStatus.DISPATCHED.value


# -- times ------------------------------------------------------------------------------------

def utcnow() -> datetime:
    """Now, as the naive UTC the database stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(moment: datetime | None) -> datetime | None:
    """An aware time as naive UTC (naive times are taken to be UTC already)."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def aware_utc(moment: datetime | None) -> datetime | None:
    """A naive UTC time as read from the database, made aware."""
    return None if moment is None else moment.replace(tzinfo=UTC)


# -- keys -------------------------------------------------------------------------------------

def request_key(request_id: str) -> uuid.UUID:
    """A request id given by a caller, checked (InvalidRequestError if it is not a UUID), as
    the `uuid.UUID` that SQLAlchemy's Uuid columns take."""
    return uuid.UUID(hex=check_request_id(request_id))


# -- values in each encoding ------------------------------------------------------------------

class SqliteValues:
    """SQLite through the driver: UUIDs as 32 hex digits, times as text that sorts in time
    order (SQLAlchemy's own formats for these columns)."""

    placeholder = "?"

    @staticmethod
    def key(request_id: str) -> Any:
        """A checked request id as the id column holds it."""
        return request_id

    @staticmethod
    def time(moment: datetime | None) -> Any:
        """A naive UTC time as the datetime columns hold it (SQLAlchemy's SQLite format)."""
        # isoformat with the microseconds always written is that format, made in C.
        return None if moment is None else moment.isoformat(" ", "microseconds")

    @staticmethod
    def read_key(value: Any) -> str:
        """The id column's value as 32 hex digits."""
        return str(value)

    @staticmethod
    def read_time(value: Any) -> datetime | None:
        """A datetime column's value as a naive UTC time."""
        return None if value is None else datetime.fromisoformat(value)


class PostgresValues:
    """PostgreSQL through psycopg: native uuid and timestamp values."""

    placeholder = "%s"

    @staticmethod
    def key(request_id: str) -> Any:
        """A checked request id as a uuid."""
        return uuid.UUID(hex=request_id)

    @staticmethod
    def time(moment: datetime | None) -> Any:
        """Naive UTC, as the timestamp columns hold it."""
        return moment

    @staticmethod
    def read_key(value: Any) -> str:
        """A uuid as 32 hex digits."""
        return value.hex if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).hex

    @staticmethod
    def read_time(value: Any) -> datetime | None:
        """Already a naive datetime."""
        return value  # type: ignore[no-any-return]


class CoreValues(PostgresValues):
    """Either dialect through SQLAlchemy Core: its Uuid and DateTime types take and return
    `uuid.UUID` and naive datetimes, as psycopg does."""


Values = type[SqliteValues] | type[PostgresValues]


def values_for(dialect_name: str) -> Values:
    """The driver's encoding for this SQLAlchemy dialect name."""
    return PostgresValues if dialect_name == "postgresql" else SqliteValues


# -- rows and records -------------------------------------------------------------------------

def new_row(values: Values, request_id: str, service: str, packed: bytes, now: datetime,
            deadline: datetime | None, idempotency_key: str | None,
            owner: str | None = None, lease_until: datetime | None = None,
            not_before: datetime | None = None, priority: int = 0) -> tuple[Any, ...]:
    """A fresh pending request in COLUMNS order, its values encoded (`now`, `deadline`,
    `lease_until` and `not_before` naive UTC, the body packed as stored). With `lease_until` it
    is stored claimed: dispatched, its first attempt leased until then. With a `not_before`
    later than `now` it is due then (a scheduled request), else now."""
    moment = values.time(now)
    due = moment if not_before is None or not_before <= now else values.time(not_before)
    if lease_until is None:
        status, attempts, lease = _PENDING, 0, None
    else:
        status, attempts, lease = _DISPATCHED, 1, values.time(lease_until)
    # In COLUMNS order (_ORDER).
    return (values.key(request_id), service, packed, None, status, attempts, moment, due,
            lease, None, None, values.time(deadline), idempotency_key, owner, priority)


def record(row: Any, values: Values, bodies: PlainBodies) -> StoredRequest:
    """A row in COLUMNS order, in this encoding, as a StoredRequest: times aware UTC, bodies
    opened by `bodies` (StoreError, from it, when a sealed one cannot be)."""
    read_time = values.read_time
    reply = row[_REPLY]
    created = aware_utc(read_time(row[_CREATED_AT]))
    due = aware_utc(read_time(row[_DUE_AT]))
    assert created is not None and due is not None
    request_id = values.read_key(row[_ID])
    unpack = bodies.unpack
    return StoredRequest(
        id=request_id,
        service=row[_SERVICE],
        request=unpack(request_id, REQUEST, row[_REQUEST]),
        reply=None if reply is None else unpack(request_id, REPLY, reply),
        status=_STATUSES[row[_STATUS]],
        attempts=row[_ATTEMPTS],
        created_at=created,
        due_at=due,
        lease_until=aware_utc(read_time(row[_LEASE_UNTIL])),
        completed_at=aware_utc(read_time(row[_COMPLETED_AT])),
        last_error=row[_LAST_ERROR],
        deadline=aware_utc(read_time(row[_DEADLINE])),
        idempotency_key=row[_IDEMPOTENCY_KEY],
        owner=row[_OWNER],
        priority=row[_PRIORITY],
    )
