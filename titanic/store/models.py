"""The schema: the requests, and the store's identity. Alembic migrations must match it (tested).

SQLAlchemy Core tables: the store reads and writes rows with Core statements and maps nothing to
objects, so the ORM (a fifth of a read-only command's start-up) is never imported.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    text,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: Every table of titanic's schema; alembic's migrations must match it (tested).
metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: The stored requests. Times are naive UTC; frames are packed by titanic.store.frames.
requests_table = Table(
    "titanic_requests",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("service", String(255), nullable=False),
    Column("request", LargeBinary, nullable=False),
    Column("reply", LargeBinary),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", DateTime(), nullable=False),
    Column("due_at", DateTime(), nullable=False),
    Column("lease_until", DateTime()),
    Column("completed_at", DateTime()),
    Column("last_error", Text),
    Column("deadline", DateTime()),
    # Unique among the requests that have one (ix_titanic_requests_idempotency_key).
    Column("idempotency_key", String(255)),
    # The CURVE public key (Z85) that submitted it, as the broker authenticated it; None
    # without CURVE (then anyone may fetch and close it).
    Column("owner", String(40)),
    # Higher first within a service (then the oldest due); 0 unless the submitter gave one.
    Column("priority", Integer, nullable=False, default=0, server_default=text("0")),
    # Purging finished requests: WHERE status IN (...) AND completed_at < ?. Only finished
    # requests (they have completed_at) are in it: storing a request does not touch it.
    Index("ix_titanic_requests_finished", "status", "completed_at",
          sqlite_where=text("completed_at IS NOT NULL"),
          postgresql_where=text("completed_at IS NOT NULL")),
    # A resent submit finds its request (ON CONFLICT); requests without a key are not in
    # it (a UNIQUE constraint would hold a NULL entry for each, written at every insert).
    Index("ix_titanic_requests_idempotency_key", "idempotency_key", unique=True,
          sqlite_where=text("idempotency_key IS NOT NULL"),
          postgresql_where=text("idempotency_key IS NOT NULL")),
    # Unfinished requests of one key (--max-stored-per-key): WHERE owner IN (?) AND status
    # IN. Only requests with an owner (CURVE) are in it: without one, storing a request
    # and changing its status touch one index less.
    Index("ix_titanic_requests_owner_status", "owner", "status",
          sqlite_where=text("owner IS NOT NULL"), postgresql_where=text("owner IS NOT NULL")),
)

#: The parts of streamed replies (18/MDP PARTIALs, then the FINAL's frames), numbered from 1 per
#: request as they arrive; frames packed as a reply's are. A request's parts go with it (close,
#: purge). A new attempt writes its parts over the earlier attempt's, by number.
reply_parts_table = Table(
    "titanic_reply_parts",
    metadata,
    Column("request_id", Uuid(), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("frames", LargeBinary, nullable=False),
    PrimaryKeyConstraint("request_id", "seq"),
)

#: The requests of this store sent to another site (titanic.dispatch.peer_link): to which
#: peer and its UUID there, so that a restarted dispatcher asks for their replies at once. A
#: row is deleted when its reply is stored here, or found orphaned at a link's start.
forwards_table = Table(
    "titanic_forwards",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("peer", String(64), nullable=False),
    Column("far_id", Uuid(), nullable=False),
)

# Next due requests of a service: WHERE status = 'pending' AND service = ? AND due_at <= ?
# ORDER BY priority DESC, due_at; the services with requests due, by a skip scan over
# (service, priority) (SqlStore.due_services); leases running out: WHERE status =
# 'dispatched' AND lease_until < ?. The only index of every request besides the primary key
# (0018_request_priority).
Index("ix_titanic_requests_status_service_priority_due", requests_table.c.status,
      requests_table.c.service, requests_table.c.priority.desc(), requests_table.c.due_at)

#: The store's identity: one row, made when the schema is created. Dispatchers compare it to
#: make sure every dispatcher on the same brokers uses the same store (a PostgreSQL standby has
#: the same identity as its primary, so a failover keeps it).
identity_table = Table(
    "titanic_store",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("created_at", DateTime(), nullable=False),
)

#: Limits per service, shared by every dispatcher of the store (titanic.store.limits): at most
#: `max_in_flight` dispatched at once, and a token bucket of `rate` per second holding at most
#: `burst` tokens, refilled and spent by each claim in its transaction.
limits_table = Table(
    "titanic_service_limits",
    metadata,
    Column("service", String(255), primary_key=True),
    Column("max_in_flight", Integer),
    Column("rate", Float),
    Column("burst", Float, nullable=False),
    Column("tokens", Float, nullable=False),
    Column("refilled_at", DateTime(), nullable=False),
)
