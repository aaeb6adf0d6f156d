"""The store's parts of streamed replies, on SQLite and PostgreSQL: stored with a turn while
their request is dispatched, a new attempt's over an earlier one's, trimmed, read after a
number, gone with their request; and the migration that adds their table to a store in use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from titanic.store import NewRequest, RequestStatus, SqlStore, migrate, open_store
from titanic.store.dialect import make_engine
from titanic.store.frames import encode_frames


def dispatched(store: SqlStore, body: bytes = b"x") -> str:
    exchange = store.exchange([NewRequest("stream", (body,))], [], {}, 30.0,
                              claim_new={"stream": 1})
    assert [delivery.id for delivery in exchange.claimed] == exchange.ids
    return exchange.ids[0]


def test_parts_are_stored_with_a_turn_and_read_after_a_number(db_url: str) -> None:
    store = open_store(db_url)
    try:
        first, other = dispatched(store), dispatched(store)
        store.exchange([], [], {}, 30.0, parts=[(first, 1, [b"a", b""]), (first, 2, [b"b"]),
                                                 (other, 1, [b"z"])])
        assert store.parts_after(first, 0) == [(1, (b"a", b"")), (2, (b"b",))]
        assert store.parts_after(first, 1) == [(2, (b"b",))]
        assert store.parts_after(first, 2) == []
        # A new attempt writes over the earlier one's parts; the reply trims what is past its
        # last part, in the same transaction.
        store.exchange([], [(first, [b"A", b"B"])], {}, 30.0,
                       parts=[(first, 1, [b"A"]), (first, 2, [b"B"])], trims=[(first, 2)])
        store.exchange([], [], {}, 30.0, parts=[(first, 3, [b"late"])])
        assert store.parts_after(first, 0) == [(1, (b"A",)), (2, (b"B",))]
        assert store.get(first).status is RequestStatus.DONE  # type: ignore[union-attr]
        store.exchange([], [], {}, 30.0, trims=[(other, 0)])
        assert store.parts_after(other, 0) == []
    finally:
        store.close_store()


def test_a_pending_request_takes_no_parts_and_parts_go_with_their_request(db_url: str) -> None:
    store = open_store(db_url)
    try:
        [pending] = store.exchange([NewRequest("stream", (b"x",))], [], {}, 30.0).ids
        store.exchange([], [], {}, 30.0, parts=[(pending, 1, [b"no"])])
        assert store.parts_after(pending, 0) == []
        closed, purged, kept = dispatched(store), dispatched(store), dispatched(store)
        store.exchange([], [(purged, [b"p"])], {}, 30.0,
                       parts=[(rid, 1, [b"part"]) for rid in (closed, purged, kept)])
        store.close(closed)
        assert store.parts_after(closed, 0) == []
        later = datetime.now(UTC) + timedelta(hours=1)
        assert store.purge(reply_ttl=60, now=later) == 1
        assert store.parts_after(purged, 0) == []
        assert store.parts_after(kept, 0) == [(1, (b"part",))]
    finally:
        store.close_store()


def test_closing_a_batch_takes_the_parts_of_its_requests_and_no_others(db_url: str) -> None:
    store = open_store(db_url)
    try:
        first, second, kept = dispatched(store), dispatched(store), dispatched(store)
        store.exchange([], [], {}, 30.0,
                       parts=[(rid, 1, [b"part"]) for rid in (first, second, kept)])
        store.close_many([first, second])
        assert store.get(first) is None and store.get(second) is None
        assert store.parts_after(first, 0) == [] and store.parts_after(second, 0) == []
        assert store.parts_after(kept, 0) == [(1, (b"part",))]
    finally:
        store.close_store()


def test_the_parts_migration_upgrades_a_store_in_use(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0017_drop_status_due_index")
        with engine.begin() as conn:
            for request_id, status in (("a" * 32, "pending"), ("b" * 32, "dispatched")):
                conn.execute(text(
                    "INSERT INTO titanic_requests (id, service, request, status, attempts, "
                    "created_at, due_at, lease_until) VALUES (:id, 'stream', :body, :status, 1, "
                    "'2026-12-01 09:00:00', '2026-12-01 09:00:00', '2099-01-01 00:00:00')"),
                    {"id": request_id, "status": status, "body": encode_frames([b"x"])})
        migrate.ensure_schema(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check(engine)
    finally:
        engine.dispose()
    store = open_store(db_url)
    try:
        assert store.get("a" * 32).status is RequestStatus.PENDING  # type: ignore[union-attr]
        store.exchange([], [], {}, 30.0, parts=[("b" * 32, 1, [b"first"])])
        assert store.parts_after("b" * 32, 0) == [(1, (b"first",))]
    finally:
        store.close_store()
