"""The schema: the requests, and the store's identity. Alembic migrations must match it (tested)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import cast

from sqlalchemy import (
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RequestRow(Base):
    """A stored request. Times are naive UTC; frames are packed by titanic.store.frames."""

    __tablename__ = "titanic_requests"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    service: Mapped[str] = mapped_column(String(255))
    request: Mapped[bytes] = mapped_column(LargeBinary)
    reply: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime())
    due_at: Mapped[datetime] = mapped_column(DateTime())
    lease_until: Mapped[datetime | None] = mapped_column(DateTime())
    completed_at: Mapped[datetime | None] = mapped_column(DateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    deadline: Mapped[datetime | None] = mapped_column(DateTime())
    #: Unique among the requests that have one (ix_titanic_requests_idempotency_key).
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    #: The CURVE public key (Z85) that submitted it, as the broker authenticated it; None
    #: without CURVE (then anyone may fetch and close it).
    owner: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        # Next due requests of a service: WHERE status = 'pending' AND service = ? ORDER BY
        # due_at; the services with requests due, by a skip scan (SqlStore.due_services); leases
        # running out: WHERE status = 'dispatched' AND lease_until < ?. The only index of every
        # request besides the primary key (0017_drop_status_due_index).
        Index("ix_titanic_requests_status_service_due", "status", "service", "due_at"),
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


class StoreIdentityRow(Base):
    """The store's identity: one row, made when the schema is created. Dispatchers compare it
    to make sure every dispatcher on the same brokers uses the same store (a PostgreSQL standby
    has the same identity as its primary, so a failover keeps it)."""

    __tablename__ = "titanic_store"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())


requests_table = cast(Table, RequestRow.__table__)
identity_table = cast(Table, StoreIdentityRow.__table__)
