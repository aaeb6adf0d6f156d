"""Re-sealing stored bodies under the store key's current key: the second half of a rotation.

`titanic db rekey` reads the table a page at a time (by UUID) and writes back, under the current
key, every request or reply body that is plain or sealed under an older key; then the parts of
streamed replies likewise. Each write changes
a column only where it still holds what was read, so a dispatcher storing a reply meanwhile wins
(its reply is sealed under the current key already) and nothing is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from titanic.errors import StoreKeyError
from titanic.store.crypto import REPLY, REQUEST, PlainBodies, SealedBodies
from titanic.store.models import reply_parts_table as parts
from titanic.store.models import requests_table as t
from titanic.store.rows import CoreValues

#: Runs a function in one transaction, as SqlStore._transaction does (retries, StoreError).
Transaction = Callable[..., Any]
Change = tuple[uuid.UUID, Any, bytes, bytes]  # id, column, body read, body to write


def reseal_bodies(bodies: PlainBodies, transaction: Transaction, *, batch: int = 500) -> int:
    """Seal every body not sealed under the current key of `bodies` (a store's), through the
    store's `transaction`; how many were sealed anew."""
    if not isinstance(bodies, SealedBodies):
        raise StoreKeyError("re-sealing needs a store key")
    sealed, after = 0, None
    while rows := transaction(partial(_page, after, batch), write=False):
        after = rows[-1].id
        changes = [change for row in rows for change in _changes(bodies, row)]
        if changes:
            sealed += transaction(partial(_write, changes))
    return int(sealed) + _reseal_parts(bodies, transaction, batch)


def _reseal_parts(bodies: SealedBodies, transaction: Transaction, batch: int) -> int:
    """reseal_bodies for the parts of streamed replies, a page at a time by (request, seq)."""
    sealed, after = 0, None
    while rows := transaction(partial(_parts_page, after, batch), write=False):
        after = (rows[-1].request_id, rows[-1].seq)
        for row in rows:
            if bodies.is_current(row.frames):
                continue
            request_id = CoreValues.read_key(row.request_id)
            new = bodies.pack(request_id, REPLY, bodies.unpack(request_id, REPLY, row.frames))
            sealed += transaction(partial(_write_part, row, new))
    return int(sealed)


def _parts_page(after: tuple[Any, int] | None, batch: int, conn: Connection) -> Sequence[Any]:
    statement = (select(parts.c.request_id, parts.c.seq, parts.c.frames)
                 .order_by(parts.c.request_id, parts.c.seq).limit(batch))
    if after is not None:
        statement = statement.where(or_(parts.c.request_id > after[0],
                                        and_(parts.c.request_id == after[0],
                                             parts.c.seq > after[1])))
    return conn.execute(statement).all()


def _write_part(row: Any, new: bytes, conn: Connection) -> int:
    """Write one re-sealed part, only where it still holds what was read."""
    return int(conn.execute(update(parts).where(
        parts.c.request_id == row.request_id, parts.c.seq == row.seq,
        parts.c.frames == row.frames).values(frames=new)).rowcount)


def _page(after: uuid.UUID | None, batch: int, conn: Connection) -> Sequence[Any]:
    statement = select(t.c.id, t.c.request, t.c.reply).order_by(t.c.id).limit(batch)
    if after is not None:
        statement = statement.where(t.c.id > after)
    return conn.execute(statement).all()


def _changes(bodies: SealedBodies, row: Any) -> list[Change]:
    """The row's bodies that need sealing under the current key, sealed."""
    request_id = CoreValues.read_key(row.id)
    return [(row.id, column, old, bodies.pack(request_id, name,
                                              bodies.unpack(request_id, name, old)))
            for column, name, old in ((t.c.request, REQUEST, row.request),
                                      (t.c.reply, REPLY, row.reply))
            if not bodies.is_current(old)]


def _write(changes: Sequence[Change], conn: Connection) -> int:
    """Write re-sealed bodies, each only where the column still holds what was read."""
    return sum(conn.execute(update(t).where(t.c.id == key, column == old)
                            .values({column: new})).rowcount
               for key, column, old, new in changes)
