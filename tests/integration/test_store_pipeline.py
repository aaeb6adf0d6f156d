"""PostgreSQL: a dispatcher turn is one round trip, durable only when it stores new requests.

Round trips are counted from libpq's protocol trace of the store's connection: each switch from
messages the client sent to messages the server sent is one wait for the server.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from titanic.store import NewRequest, RequestStatus, SqlStore, open_store
from titanic.store import pipeline as store_pipeline
from titanic.store.rows import utcnow
from titanic.store.sql import NewBatch

pytestmark = pytest.mark.postgres

BODY = (b"x" * 100,)


@pytest.fixture
def store(postgres_url: str) -> Iterator[SqlStore]:
    sql = open_store(postgres_url)
    yield sql
    sql.close_store()


@dataclass
class Trace:
    """Protocol messages the store's connection exchanged, as (direction, message type, text)."""

    messages: list[tuple[str, str, str]]

    @property
    def round_trips(self) -> int:
        directions = [direction for direction, _, _ in self.messages]
        pairs = itertools.pairwise(directions)
        return sum(1 for sent, got in pairs if (sent, got) == ("F", "B"))

    def sent(self, text: str) -> bool:
        return any(direction == "F" and text in line for direction, _, line in self.messages)


@contextmanager
def traced(store: SqlStore, tmp_path: Path) -> Iterator[Trace]:
    """libpq's trace of this thread's pipelined connection while the block runs."""
    trace = Trace([])
    path = tmp_path / "libpq.trace"
    with store._pipelined_connection() as raw, path.open("w") as out:
        raw.pgconn.trace(out.fileno())
        raw.pgconn.set_trace_flags(1)  # no timestamps
        try:
            yield trace
        finally:
            raw.pgconn.untrace()
    for line in path.read_text(errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[0] in ("F", "B"):
            trace.messages.append((fields[0], fields[2], line))


def test_storing_new_requests_is_one_durable_round_trip(store: SqlStore, tmp_path: Path) -> None:
    store.submit("svc", BODY)  # the connection is open before tracing
    with traced(store, tmp_path) as trace:
        ids = store.submit_many([NewRequest("svc", BODY)] * 32)
    assert trace.round_trips == 1
    assert not trace.sent("synchronous_commit")  # committed before the UUIDs are returned
    assert all(store.get(i).status is RequestStatus.PENDING for i in ids)  # type: ignore[union-attr]


def test_replies_and_claims_are_one_round_trip_without_waiting_for_the_disk(
        store: SqlStore, tmp_path: Path) -> None:
    answered = store.submit("svc", BODY)
    waiting = [store.submit(service, BODY) for service in ("svc", "other", "svc")]
    store.claim_due(["svc"], 1, 60)
    with traced(store, tmp_path) as trace:
        result = store.exchange([], [(answered, [b"reply"])], {"svc": 5, "other": 5}, 60)
    assert trace.round_trips == 1
    assert trace.sent("synchronous_commit")  # a lease or a reply that a lease would resend
    assert result.completed == 1 and [d.id for d in result.claimed] == waiting
    assert store.get(answered).reply == (b"reply",)  # type: ignore[union-attr]


def test_a_turn_with_new_requests_replies_and_claims_is_one_round_trip(
        store: SqlStore, tmp_path: Path) -> None:
    first = store.submit("svc", BODY)
    store.claim_due(None, 1, 60)
    with traced(store, tmp_path) as trace:
        result = store.exchange([NewRequest("svc", BODY)], [(first, [b"r"])], {"svc": 5}, 60)
    assert trace.round_trips == 1 and not trace.sent("synchronous_commit")
    assert result.completed == 1 and [d.id for d in result.claimed] == result.ids


def test_more_rows_than_one_statement_takes_are_still_one_round_trip(
        store: SqlStore, tmp_path: Path) -> None:
    many = store_pipeline._ROWS_PER_STATEMENT * 2 + 3
    store.submit("svc", BODY)
    with traced(store, tmp_path) as trace:
        ids = store.exchange([NewRequest("svc", BODY)] * many, [], {}, 60).ids
    assert trace.round_trips == 1 and not trace.sent("synchronous_commit")
    assert len(set(ids)) == many
    assert store.stats().counts[("svc", RequestStatus.PENDING)] == many + 1
    claimed = store.claim_due(["svc"], many + 1, 60)
    replies = [(request.id, [request.id.encode()]) for request in claimed]
    with traced(store, tmp_path) as trace:
        result = store.exchange([], replies, {}, 60)
    assert trace.round_trips == 1 and result.completed == many + 1
    assert all(store.get(i).reply == (i.encode(),) for i in ids)  # type: ignore[union-attr]


def test_a_failing_statement_rolls_the_whole_turn_back(store: SqlStore) -> None:
    first = store.submit("svc", BODY)
    store.claim_due(None, 1, 60)
    ids, rows = store._new_rows([NewRequest("svc", BODY)], utcnow())
    turn = store_pipeline.Turn(rows + rows, [(first, b"\x00\x00\x00\x00")], [], utcnow(), utcnow())
    with store._pipelined_connection() as raw, pytest.raises(Exception, match="duplicate"):
        store_pipeline.run_turn(raw, store._hot, turn)  # the same id twice
    assert store.get(ids[0]) is None
    assert store.get(first).status is RequestStatus.DISPATCHED  # type: ignore[union-attr]
    assert store.exchange([], [(first, [b"r"])], {}, 60).completed == 1  # connection usable


def test_a_failing_insert_alone_stores_none_of_its_rows(store: SqlStore) -> None:
    ids, rows = store._new_rows([NewRequest("svc", BODY)] * 3, utcnow())
    turn = store_pipeline.Turn(rows + rows[:1], [], [], utcnow(), utcnow())  # one id twice
    with store._pipelined_connection() as raw, pytest.raises(Exception, match="duplicate"):
        store_pipeline.run_turn(raw, store._hot, turn)  # one statement, outside a pipeline
    assert all(store.get(i) is None for i in ids)
    again = store.exchange([NewRequest("svc", BODY)], [], {}, 60).ids  # connection usable
    assert store.get(again[0]).status is RequestStatus.PENDING  # type: ignore[union-attr]


def test_a_turn_retried_after_its_commit_landed_stores_nothing_twice(store: SqlStore) -> None:
    first = store.submit("svc", BODY)
    store.claim_due(None, 1, 60)
    new = [NewRequest("svc", BODY)] * 2 + [NewRequest("svc", BODY, idempotency_key="k")]
    ids, rows = store._new_rows(new, utcnow())
    batch = NewBatch.of(new, ids, rows)
    turn = store_pipeline.Turn(batch.rows, [], [], utcnow(), utcnow(), keyed=True)
    with store._pipelined_connection() as raw:
        assert store._run_driver_turn(store_pipeline, raw, batch, turn).ids == ids
        again = replace(turn, replies=[(first, b"\x00\x00\x00\x00")])
        # As if the answer to the first was lost:
        result = store._run_driver_turn(store_pipeline, raw, batch, again)
    assert result.ids == ids and result.completed == 1
    assert store.stats().counts[("svc", RequestStatus.PENDING)] == 3


def test_a_keyed_turn_is_one_round_trip_unless_the_key_is_stored(store: SqlStore,
                                                                  tmp_path: Path) -> None:
    store.submit("svc", BODY)  # the connection is open before tracing
    keyed = [NewRequest("svc", BODY, idempotency_key="order-9")]
    with traced(store, tmp_path) as trace:
        request_id = store.exchange(keyed, [], {}, 60).ids[0]
    assert trace.round_trips == 1
    with traced(store, tmp_path) as trace:
        assert store.exchange(keyed, [], {}, 60).ids == [request_id]
    assert trace.round_trips == 2  # the insert skipped the key: its UUID is read
