"""Delays and priorities, one contract on the three stores: a request given a `not_before` is
stored at once, shown `scheduled` and claimed only once due; within a service the claim takes
the highest priority first, then the oldest due."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from titanic.errors import InvalidRequestError
from titanic.store import (
    SCHEDULED,
    NewRequest,
    RequestStatus,
    Store,
    open_store,
    shown_state,
)
from titanic.testing import MemoryStore

HOUR = timedelta(hours=1)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url_fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    sql = open_store(request.getfixturevalue(url_fixture))
    yield sql
    sql.close_store()


def test_a_delayed_request_is_scheduled_until_its_time_then_claimed(store: Store) -> None:
    now = datetime.now(UTC)
    (later,) = store.submit_many([NewRequest("svc", (b"x",), not_before=now + HOUR)])
    stored = store.get(later)
    assert stored is not None and stored.status is RequestStatus.PENDING
    assert stored.due_at == pytest.approx(now + HOUR, abs=timedelta(milliseconds=1))
    assert shown_state(stored, now) == SCHEDULED
    assert store.due_services() == set()
    assert store.claim_due(["svc"], 10, 60) == []
    assert store.claim_due(None, 10, 60) == []
    assert store.next_due_at() == stored.due_at
    soon = now + HOUR + timedelta(seconds=1)
    assert store.due_services(now=soon) == {"svc"}
    assert shown_state(stored, soon) == RequestStatus.PENDING.value
    assert [r.id for r in store.claim_due(["svc"], 10, 60, now=soon)] == [later]


def test_a_time_already_past_is_due_at_once_and_not_ahead_of_older_requests(
        store: Store) -> None:
    first = store.submit("svc", [b"first"])
    (past,) = store.submit_many([NewRequest("svc", (b"past",),
                                            not_before=datetime(2020, 1, 1, tzinfo=UTC))])
    stored = store.get(past)
    assert stored is not None and shown_state(stored, datetime.now(UTC)) == "pending"
    assert [r.id for r in store.claim_due(["svc"], 10, 60)] == [first, past]


def test_the_claim_takes_the_highest_priority_first_then_the_oldest(store: Store) -> None:
    priorities = [0, 5, -3, 5, 0, 2]
    ids = store.submit_many([NewRequest("svc", (b"%d" % p,), priority=p) for p in priorities])
    expected = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-priorities[i], i))]
    claimed = []
    while batch := store.claim_due(["svc"], 2, 60):
        claimed += [r.id for r in batch]
    assert claimed == expected
    assert [store.get(i).priority for i in ids] == priorities  # type: ignore[union-attr]


def test_a_high_priority_not_yet_due_waits_and_holds_back_nothing(store: Store) -> None:
    now = datetime.now(UTC)
    (high,) = store.submit_many([NewRequest("svc", (b"h",), priority=9, not_before=now + HOUR)])
    low = store.submit("svc", [b"l"])
    assert [r.id for r in store.claim_due(["svc"], 10, 60)] == [low]
    assert [r.id for r in store.claim_due(["svc"], 10, 60, now=now + 2 * HOUR)] == [high]


def test_exchange_stores_a_delayed_request_pending_even_when_asked_to_claim_new_ones(
        store: Store) -> None:
    now = datetime.now(UTC)
    done = store.exchange([NewRequest("svc", (b"a",), not_before=now + HOUR),
                           NewRequest("svc", (b"b",))], [], {}, 60, claim_new={"svc": 2})
    later, at_once = done.ids
    assert [d.id for d in done.claimed] == [at_once]
    assert store.get(later).status is RequestStatus.PENDING  # type: ignore[union-attr]


def test_due_services_sees_every_priority_of_every_service(store: Store) -> None:
    now = datetime.now(UTC)
    store.submit_many([NewRequest("a", (b"x",), priority=3, not_before=now + HOUR),
                       NewRequest("a", (b"x",), priority=-2),
                       NewRequest("b", (b"x",), priority=1, not_before=now + HOUR),
                       NewRequest("c", (b"x",), priority=7)])
    assert store.due_services() == {"a", "c"}
    assert store.due_services(now=now + 2 * HOUR) == {"a", "b", "c"}


def test_a_priority_out_of_range_is_refused(store: Store) -> None:
    with pytest.raises(InvalidRequestError, match="priority"):
        store.submit_many([NewRequest("svc", (b"x",), priority=10**7)])


def test_list_and_summary_tell_scheduled_requests_apart(store: Store) -> None:
    now = datetime.now(UTC)
    (later,) = store.submit_many([NewRequest("svc", (b"x",), not_before=now + HOUR)])
    due = store.submit("svc", [b"y"])
    assert [r.id for r in store.list(scheduled=True)] == [later]
    assert [r.id for r in store.list(status=RequestStatus.PENDING, scheduled=False)] == [due]
    (summary,) = store.summary(since=now)
    assert summary.counts[RequestStatus.PENDING] == 2 and summary.scheduled == 1
    assert summary.shown_counts()["pending"] == 1 and summary.shown_counts()["scheduled"] == 1
    assert summary.oldest_pending == store.get(due).created_at  # type: ignore[union-attr]


def test_the_pending_ttl_of_a_scheduled_request_counts_from_its_time(store: Store) -> None:
    now = datetime.now(UTC)
    (later,) = store.submit_many([NewRequest("svc", (b"x",), not_before=now + 3 * HOUR)])
    waiting = store.submit("svc", [b"y"])
    assert store.expire(pending_ttl=3600, now=now + 2 * HOUR) == 1
    assert store.get(waiting).status is RequestStatus.EXPIRED  # type: ignore[union-attr]
    assert store.get(later).status is RequestStatus.PENDING  # type: ignore[union-attr]
    assert store.expire(pending_ttl=3600, now=now + 5 * HOUR) == 1
    assert store.get(later).status is RequestStatus.EXPIRED  # type: ignore[union-attr]


def test_a_cancelled_waiting_request_is_never_claimed(store: Store) -> None:
    now = datetime.now(UTC)
    first = store.submit("svc", [b"a"])
    (later,) = store.submit_many([NewRequest("svc", (b"b",), not_before=now + HOUR)])
    second = store.submit("svc", [b"c"])
    assert store.cancel(first) == "pending"
    assert store.cancel(later) == SCHEDULED
    assert store.cancel(first) == "cancelled"  # again: nothing changes
    assert [r.id for r in store.claim_due(["svc"], 10, 60, now=now + 2 * HOUR)] == [second]
    gone = store.get(first)
    assert gone is not None and gone.status is RequestStatus.CANCELLED
    assert gone.completed_at is not None
    assert [r.id for r in store.list(status=RequestStatus.CANCELLED)] == [first, later]


def test_a_cancelled_request_in_hand_keeps_no_late_reply(store: Store) -> None:
    request_id = store.submit("svc", [b"a"])
    store.claim_due(["svc"], 1, 60)
    assert store.cancel(request_id) == "dispatched"
    assert store.complete(request_id, [b"late"]) is False
    assert store.retry_later(request_id, "boom", max_attempts=5, backoff=1,
                             backoff_max=1) is RequestStatus.CANCELLED
    store.release_stale(now=datetime.now(UTC) + HOUR)
    stored = store.get(request_id)
    assert stored is not None and (stored.status, stored.reply) == (RequestStatus.CANCELLED,
                                                                    None)


def test_finished_unknown_and_other_owners_requests_are_not_cancelled(store: Store) -> None:
    done = store.submit("svc", [b"a"])
    store.claim_due(["svc"], 1, 60)
    store.complete(done, [b"r"])
    assert store.cancel(done) == "done"
    assert store.get(done).status is RequestStatus.DONE  # type: ignore[union-attr]
    assert store.cancel("0" * 32) is None
    (owned,) = store.submit_many([NewRequest("svc", (b"x",), owner="alice")])
    assert store.cancel(owned, owners=(None, "mallory")) is None
    assert store.get(owned).status is RequestStatus.PENDING  # type: ignore[union-attr]
    assert store.cancel(owned, owners=(None, "alice")) == "pending"


def test_purge_deletes_cancelled_requests_like_other_finished_ones(store: Store) -> None:
    request_id = store.submit("svc", [b"a"])
    store.cancel(request_id)
    assert store.purge_finished(RequestStatus.CANCELLED, older_than=3600) == 0
    assert store.purge(reply_ttl=60, now=datetime.now(UTC) + HOUR) == 1
    assert store.get(request_id) is None


def test_earliest_due_names_each_waiting_services_first_time(store: Store) -> None:
    now = datetime.now(UTC)
    store.submit_many([NewRequest("a", (b"x",), not_before=now + HOUR),
                       NewRequest("a", (b"x",), not_before=now + 2 * HOUR),
                       NewRequest("b", (b"x",), priority=3, not_before=now + 3 * HOUR)])
    store.submit("c", [b"x"])
    store.claim_due(["c"], 1, 60)
    store.submit("c", [b"y"])
    found = store.earliest_due()
    assert set(found) == {"a", "b", "c"}
    assert found["a"] == pytest.approx(now + HOUR, abs=timedelta(milliseconds=1))
    assert found["b"] == pytest.approx(now + 3 * HOUR, abs=timedelta(milliseconds=1))
    assert found["c"] <= datetime.now(UTC)
