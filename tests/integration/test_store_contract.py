"""One contract, three stores: in memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from titanic.errors import InvalidRequestError
from titanic.store import NewRequest, RequestStatus, Store, open_store
from titanic.testing import MemoryStore


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore(max_request_bytes=1000)
        return
    url_fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    sql = open_store(request.getfixturevalue(url_fixture), max_request_bytes=1000)
    yield sql
    sql.close_store()


LATER = timedelta(hours=1)


def test_frames_come_back_exactly(store: Store) -> None:
    frames = (b"", b"\x00\x01", b"", b"x" * 500, b"")
    request_id = store.submit("svc", frames)
    stored = store.get(request_id)
    assert stored is not None
    assert stored.request == frames
    assert store.get(store.submit("svc", [])).request == ()  # type: ignore[union-attr]


def test_new_requests_are_pending_and_due(store: Store) -> None:
    request_id = store.submit("svc", [b"a"])
    stored = store.get(request_id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.reply) == (RequestStatus.PENDING, 0, None)
    assert stored.created_at.tzinfo is not None
    assert store.due_services() == {"svc"}


def test_due_services_names_each_service_with_a_request_due_now(store: Store) -> None:
    assert store.due_services() == set()
    store.submit_many([NewRequest(service, (b"x",)) for service in ("a", "a", "b", "c", "d")])
    store.claim_due(["c"], 1, 60)
    (claimed_b,) = store.claim_due(["b"], 1, 60)
    # "b" pending again, but due only after its backoff; "c" dispatched.
    store.retry_later(claimed_b.id, "boom", max_attempts=5, backoff=60, backoff_max=60)
    assert store.due_services() == {"a", "d"}
    assert store.due_services(now=datetime.now(UTC) + timedelta(minutes=5)) == {"a", "b", "d"}
    store.claim_due(["a"], 2, 60)
    assert store.due_services() == {"d"}


def test_ids_are_32_hex_and_time_ordered(store: Store) -> None:
    ids = [store.submit("svc", [str(n).encode()]) for n in range(20)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    listed = [r.id for r in store.list(service="svc", limit=100)]
    assert listed == sorted(ids)
    assert ids[0][:8] <= ids[-1][:8]


def test_submit_many_returns_ids_in_order(store: Store) -> None:
    ids = store.submit_many([NewRequest("a", (b"1",)), NewRequest("b", (b"2",))])
    assert [store.get(i).request for i in ids] == [(b"1",), (b"2",)]  # type: ignore[union-attr]


def test_idempotency_key_returns_the_existing_request(store: Store) -> None:
    first = store.submit("svc", [b"a"], idempotency_key="k1")
    again = store.submit("svc", [b"b"], idempotency_key="k1")
    assert first == again
    assert store.get(first).request == (b"a",)  # type: ignore[union-attr]


def test_a_key_repeated_in_one_batch_and_across_batches_is_stored_once(store: Store) -> None:
    ids = store.submit_many([NewRequest("svc", (b"a",), idempotency_key="k2"),
                             NewRequest("svc", (b"plain",)),
                             NewRequest("svc", (b"b",), idempotency_key="k2")])
    assert ids[0] == ids[2] != ids[1]
    again = store.exchange([NewRequest("svc", (b"c",), idempotency_key="k2")], [], {}, 30)
    assert again.ids == [ids[0]]
    assert store.stats().by_status() == {RequestStatus.PENDING: 2}


def test_the_store_identity_is_stable(store: Store) -> None:
    identity = store.identity()
    assert len(identity.id) == 32 and identity.location
    assert store.identity() == identity


def test_claim_leases_oldest_first_and_only_once(store: Store) -> None:
    ids = [store.submit("svc", [str(n).encode()]) for n in range(5)]
    store.submit("other", [b"x"])
    first = store.claim_due(["svc"], 3, 30)
    assert [r.id for r in first] == ids[:3]
    assert all(r.status is RequestStatus.DISPATCHED and r.attempts == 1 for r in first)
    assert all(r.lease_until is not None for r in first)
    second = store.claim_due(["svc"], 10, 30)
    assert [r.id for r in second] == ids[3:]
    assert store.claim_due(["svc"], 10, 30) == []
    assert [r.service for r in store.claim_due(None, 10, 30)] == ["other"]


def test_claim_of_several_services_takes_the_oldest_due_across_them(store: Store) -> None:
    ids = [store.submit(service, [b"x"]) for _ in range(3) for service in ("a", "b", "c")]
    claimed = store.claim_due(["b", "a", "absent"], 3, 30)
    assert [r.id for r in claimed] == [ids[0], ids[1], ids[3]]
    rest = store.claim_due(["a", "b"], 10, 30)
    assert [r.id for r in rest] == [ids[4], ids[6], ids[7]]


def test_claim_of_any_service_takes_the_oldest_due_of_all(store: Store) -> None:
    # Every service but the first has one request due before the next one's; "a" has three
    # more, due last: the claims take them in due order across services, `limit` at a time.
    ids = {service: store.submit(service, [b"x"]) for service in ["b", "c", "d", "e", "a"]}
    later = [store.submit("a", [b"x"]) for _ in range(3)]
    assert [r.id for r in store.claim_due(None, 2, 30)] == [ids["b"], ids["c"]]
    assert [r.id for r in store.claim_due(None, 4, 30)] == [
        ids["d"], ids["e"], ids["a"], later[0]]
    assert [r.id for r in store.claim_due(None, 10, 30)] == later[1:]
    assert store.claim_due(None, 10, 30) == []


def test_next_due_at_is_the_earliest_due_of_any_service(store: Store) -> None:
    assert store.next_due_at() is None
    first = store.submit("b", [b"x"])
    store.submit("a", [b"x"])
    stored = store.get(first)
    assert stored is not None
    assert store.next_due_at() == stored.due_at
    assert store.next_due_at(["a"]) is not None and store.next_due_at(["a"]) >= stored.due_at
    store.claim_due(None, 10, 30)
    assert store.next_due_at() is None


def test_complete_stores_the_reply_once(store: Store) -> None:
    request_id = store.submit("svc", [b"a"])
    store.claim_due(None, 1, 30)
    assert store.complete(request_id, [b"r", b""])
    done = store.get(request_id)
    assert done is not None and done.status is RequestStatus.DONE
    assert done.reply == (b"r", b"") and done.completed_at is not None
    assert not store.complete(request_id, [b"again"])
    assert store.get(request_id).reply == (b"r", b"")  # type: ignore[union-attr]


def test_complete_many_in_one_call(store: Store) -> None:
    ids = [store.submit("svc", [b"a"]) for _ in range(3)]
    store.claim_due(None, 3, 30)
    assert store.complete_many([(i, [i.encode()]) for i in ids] + [("0" * 32, [b"x"])]) == 3
    assert all(store.get(i).reply == (i.encode(),) for i in ids)  # type: ignore[union-attr]


def test_an_exchange_keeps_the_first_of_two_replies_to_one_request(store: Store) -> None:
    request_id = store.submit("svc", [b"a"])
    store.claim_due(None, 1, 30)
    result = store.exchange([], [(request_id, [b"first"]), (request_id, [b"second"])], {}, 30)
    assert result.completed == 1
    assert store.get(request_id).reply == (b"first",)  # type: ignore[union-attr]


def test_retry_later_backs_off_then_fails(store: Store) -> None:
    request_id = store.submit("svc", [b"a"])
    now = datetime.now(UTC)
    store.claim_due(None, 1, 30, now=now)
    status = store.retry_later(request_id, "timeout", max_attempts=2, backoff=10,
                               backoff_max=60, now=now)
    assert status is RequestStatus.PENDING
    pending = store.get(request_id)
    assert pending is not None and pending.last_error == "timeout"
    assert pending.due_at >= now + timedelta(seconds=9)
    assert store.claim_due(None, 1, 30, now=now) == []  # not due yet
    later = now + timedelta(seconds=11)
    assert len(store.claim_due(None, 1, 30, now=later)) == 1
    assert store.retry_later(request_id, "timeout", max_attempts=2, backoff=10, backoff_max=60,
                             now=later) is RequestStatus.FAILED
    failed = store.get(request_id)
    assert failed is not None and failed.status is RequestStatus.FAILED
    assert "timeout" in (failed.last_error or "")
    assert store.requeue(request_id)
    again = store.get(request_id)
    assert again is not None and (again.status, again.attempts) == (RequestStatus.PENDING, 0)


def test_release_stale_recovers_expired_leases(store: Store) -> None:
    request_id = store.submit("svc", [b"a"])
    now = datetime.now(UTC)
    store.claim_due(None, 1, 5, now=now)
    assert store.release_stale(now=now + timedelta(seconds=1)) == 0
    assert store.release_stale(now=now + timedelta(seconds=6)) == 1
    assert store.get(request_id).status is RequestStatus.PENDING  # type: ignore[union-attr]
    assert store.claim_due(None, 1, 5, now=now + timedelta(seconds=7))[0].attempts == 2


def test_release_hands_back_without_counting(store: Store) -> None:
    request_id = store.submit("svc", [b"a"])
    store.claim_due(None, 1, 30)
    assert store.release(request_id)
    back = store.get(request_id)
    assert back is not None and (back.status, back.attempts) == (RequestStatus.PENDING, 0)
    assert not store.release(request_id)


def test_expire_and_purge(store: Store) -> None:
    old = store.submit("svc", [b"a"])
    soon = store.submit("svc", [b"b"], deadline=datetime.now(UTC) + timedelta(seconds=1))
    done = store.submit("svc", [b"c"])
    store.claim_due(["svc"], 10, 30)
    store.release(old)
    store.release(soon)
    store.complete(done, [b"r"])
    now = datetime.now(UTC)
    assert store.expire(pending_ttl=3600, now=now + timedelta(seconds=5)) == 1  # the deadline
    assert store.get(soon).status is RequestStatus.EXPIRED  # type: ignore[union-attr]
    assert store.expire(pending_ttl=60, now=now + timedelta(seconds=120)) == 1  # too old
    expired = store.get(old)
    assert expired is not None and expired.status is RequestStatus.EXPIRED
    assert "60" in (expired.last_error or "")
    assert store.purge(reply_ttl=3600, now=now) == 0
    assert store.purge(reply_ttl=60, now=now + LATER) == 3
    assert store.get(done) is None and store.stats().counts == {}


def test_close_deletes_and_unknown_is_fine(store: Store) -> None:
    request_id = store.submit("svc", [b"a"])
    store.close(request_id)
    assert store.get(request_id) is None
    store.close(request_id)
    store.close("0" * 32)


def test_close_many_deletes_them_all_in_one_call(store: Store) -> None:
    kept, *closed = store.submit_many([NewRequest("svc", (b"%d" % n,)) for n in range(4)])
    store.complete(closed[0], [b"reply"])
    store.close_many([*closed, "0" * 32])
    assert [store.get(request_id) for request_id in closed] == [None] * 3
    assert store.get(kept) is not None
    store.close_many([])


def test_forwards_to_other_sites_are_remembered_while_their_requests_are_dispatched(
        store: Store) -> None:
    first, second, third = store.submit_many([NewRequest("svc", (b"%d" % n,)) for n in range(3)])
    store.claim_due(["svc"], 3, 60)
    far = [f"{n:032x}" for n in range(1, 4)]
    store.record_forwards([(first, "lyon", far[0]), (second, "lyon", far[1]),
                           (third, "rome", far[2])])
    store.record_forwards([(second, "lyon", far[2])])  # sent again: the latest is kept
    assert store.forwards_of("lyon") == sorted([(first, far[0]), (second, far[2])])
    store.complete(first, [b"reply"])  # no longer dispatched: forgotten when next read
    assert store.forwards_of("lyon") == [(second, far[2])]
    store.forget_forwards([second, "0" * 32])
    assert store.forwards_of("lyon") == []
    assert store.forwards_of("rome") == [(third, far[2])]
    store.record_forwards([])
    store.forget_forwards([])


ALICE, BOB = "A" * 40, "B" * 40


def test_owner_is_stored_and_counted_while_unfinished(store: Store) -> None:
    first, second, bobs, nobodys = store.submit_many([
        NewRequest("svc", (b"1",), owner=ALICE), NewRequest("svc", (b"2",), owner=ALICE),
        NewRequest("svc", (b"3",), owner=BOB), NewRequest("svc", (b"4",))])
    assert [store.get(i).owner for i in (first, bobs, nobodys)] == [  # type: ignore[union-attr]
        ALICE, BOB, None]
    assert store.unfinished_by_owner([ALICE, BOB, "C" * 40]) == {ALICE: 2, BOB: 1}
    store.claim_due(["svc"], 1, 30)  # dispatched still counts
    assert store.unfinished_by_owner([ALICE]) == {ALICE: 2}
    store.complete(first, [b"done"])
    assert store.unfinished_by_owner([ALICE]) == {ALICE: 1}
    assert store.unfinished_by_owner([]) == {}
    assert second != first


def test_close_with_owners_deletes_only_theirs(store: Store) -> None:
    alices, nobodys = store.submit_many([NewRequest("svc", (b"1",), owner=ALICE),
                                         NewRequest("svc", (b"2",))])
    store.close(alices, owners=(None, BOB))
    store.close(alices, owners=(None,))
    assert store.get(alices) is not None
    store.close(nobodys, owners=(None, BOB))
    assert store.get(nobodys) is None
    store.close(alices, owners=(None, ALICE))
    assert store.get(alices) is None


def test_stats_next_due_and_listing(store: Store) -> None:
    ids = [store.submit("a", [b"1"]), store.submit("a", [b"2"]), store.submit("b", [b"3"])]
    store.claim_due(["b"], 1, 30)
    counts = store.stats().counts
    assert counts == {("a", RequestStatus.PENDING): 2, ("b", RequestStatus.DISPATCHED): 1}
    assert store.next_due_at(["a"]) is not None and store.next_due_at(["zzz"]) is None
    assert [r.id for r in store.list(status=RequestStatus.PENDING)] == ids[:2]
    assert [r.id for r in store.list(limit=1, after=ids[0])] == [ids[1]]


def test_malformed_input_is_a_clear_error(store: Store) -> None:
    for bad in ["", "xyz", "0" * 31, "g" * 32, "0" * 33]:
        with pytest.raises(InvalidRequestError, match="UUID"):
            store.get(bad)
        with pytest.raises(InvalidRequestError):
            store.close(bad)
    with pytest.raises(InvalidRequestError, match="exceeds the limit of 1000 bytes"):
        store.submit("svc", [b"x" * 600, b"y" * 401])
    with pytest.raises(InvalidRequestError, match="service"):
        store.submit("", [b"x"])
    assert store.stats().counts == {}


def test_exchange_stores_completes_and_claims_in_one_call(store: Store) -> None:
    old = store.submit("svc", [b"old"])
    busy = store.submit("other", [b"busy"])
    assert [r.id for r in store.claim_due(["other"], 1, 60)] == [busy]
    result = store.exchange([NewRequest("svc", (b"new-1",)), NewRequest("svc", (b"new-2",))],
                            [(busy, [b"done"])], {"svc": 2, "absent": 5}, 60)
    assert len(result.ids) == 2 and result.completed == 1
    # The oldest due first: the request waiting before the new ones, then one of the new ones
    # (both came due at the same moment).
    first, second = result.claimed
    assert (first.id, first.service, first.request, first.attempts) == (old, "svc", (b"old",), 1)
    assert second.id in result.ids and second.attempts == 1
    assert second.request == ((b"new-1",) if second.id == result.ids[0] else (b"new-2",))
    left = [i for i in result.ids if i != second.id]
    assert store.get(left[0]).status is RequestStatus.PENDING  # type: ignore[union-attr]
    assert store.get(busy).reply == (b"done",)  # type: ignore[union-attr]
    assert store.get(old).status is RequestStatus.DISPATCHED  # type: ignore[union-attr]


def test_exchange_stores_new_requests_claimed_when_asked(store: Store) -> None:
    before = datetime.now(UTC)
    new = [NewRequest("svc", (b"a",)), NewRequest("svc", (b"b",), idempotency_key="k"),
           NewRequest("svc", (b"c",)), NewRequest("svc", (b"d",)), NewRequest("other", (b"e",))]
    result = store.exchange(new, [], {}, 60, claim_new={"svc": 2, "absent": 3})
    # The first two of "svc" without a key, in order; the keyed one and the rest stay pending.
    assert [(d.id, d.service, d.request, d.attempts) for d in result.claimed] == [
        (result.ids[0], "svc", (b"a",), 1), (result.ids[2], "svc", (b"c",), 1)]
    statuses = [store.get(i).status for i in result.ids]  # type: ignore[union-attr]
    assert statuses == [RequestStatus.DISPATCHED, RequestStatus.PENDING,
                        RequestStatus.DISPATCHED, RequestStatus.PENDING, RequestStatus.PENDING]
    claimed = store.get(result.ids[0])
    assert claimed is not None and claimed.attempts == 1 and claimed.lease_until is not None
    assert claimed.lease_until >= before + timedelta(seconds=59)
    # Stored claimed is claimed: a claim does not take it again; the pending ones it does.
    again = store.exchange([], [], {"svc": 5}, 60)
    assert sorted(d.id for d in again.claimed) == sorted([result.ids[1], result.ids[3]])


def test_exchange_refuses_an_invalid_request_and_changes_nothing(store: Store) -> None:
    waiting = store.submit("svc", [b"w"])
    with pytest.raises(InvalidRequestError):
        store.exchange([NewRequest("svc", (b"x" * 2000,))], [], {"svc": 5}, 60)
    assert store.get(waiting).status is RequestStatus.PENDING  # type: ignore[union-attr]
    assert store.exchange([], [], {}, 60).ids == []


def _fail(store: Store, request_id: str) -> None:
    assert store.fail(request_id, "boom")


def test_summary_counts_states_oldest_pending_and_recent_completions(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = store.submit("a", [b"1"])
    store.submit("a", [b"2"])
    done = store.submit("b", [b"3"])
    store.complete(done, [b"r"])
    _fail(store, store.submit("b", [b"4"]))
    summaries = {s.service: s for s in store.summary(since=before)}
    assert list(summaries) == ["a", "b"]
    a, b = summaries["a"], summaries["b"]
    assert a.counts == {RequestStatus.PENDING: 2}
    stored = store.get(first)
    assert stored is not None and a.oldest_pending == stored.created_at
    assert a.completed_since == 0
    assert b.counts == {RequestStatus.DONE: 1, RequestStatus.FAILED: 1}
    assert b.oldest_pending is None and b.completed_since == 1
    later = {s.service: s for s in store.summary(since=datetime.now(UTC) + LATER)}
    assert later["b"].completed_since == 0


def test_requeue_all_takes_failed_requests_of_one_service_or_all(store: Store) -> None:
    failed = [store.submit(service, [b"x"]) for service in ("a", "a", "b")]
    for request_id in failed:
        _fail(store, request_id)
    pending = store.submit("a", [b"p"])
    assert store.requeue_all(RequestStatus.FAILED, service="a", dry_run=True) == 2
    assert store.stats().counts[("a", RequestStatus.FAILED)] == 2  # a dry run changes nothing
    assert store.requeue_all(RequestStatus.FAILED, service="a") == 2
    again = store.get(failed[0])
    assert again is not None and again.status is RequestStatus.PENDING and again.attempts == 0
    assert store.get(pending).status is RequestStatus.PENDING  # type: ignore[union-attr]
    assert store.requeue_all(RequestStatus.FAILED) == 1
    assert store.requeue_all(RequestStatus.FAILED) == 0
    with pytest.raises(InvalidRequestError, match="retry takes failed or expired"):
        store.requeue_all(RequestStatus.DONE)


def test_purge_finished_deletes_old_requests_of_one_state_and_service(store: Store) -> None:
    done = [store.submit(service, [b"x"]) for service in ("a", "a", "b")]
    for request_id in done:
        store.complete(request_id, [b"r"])
    failed = store.submit("a", [b"f"])
    _fail(store, failed)
    now = datetime.now(UTC)
    assert store.purge_finished(RequestStatus.DONE, older_than=3600, now=now) == 0
    assert store.purge_finished(RequestStatus.DONE, older_than=60, service="a",
                                now=now + LATER, dry_run=True) == 2
    assert len(store.list(service="a", status=RequestStatus.DONE)) == 2
    assert store.purge_finished(RequestStatus.DONE, older_than=60, service="a",
                                now=now + LATER) == 2
    assert store.get(done[0]) is None and store.get(done[2]) is not None
    assert store.get(failed) is not None  # another state stays
    assert store.purge_finished(RequestStatus.DONE, older_than=60, now=now + LATER) == 1
    with pytest.raises(InvalidRequestError, match="purge takes"):
        store.purge_finished(RequestStatus.PENDING, older_than=0)
