"""The TSP handlers against the in-memory store: no sockets."""

from __future__ import annotations

import pytest

from titanic.dispatch.services import (
    check_requests,
    handle_cancel,
    handle_cancelled,
    handle_close,
    handle_follow,
    handle_reply,
    refuse_over_owner_limit,
)
from titanic.protocol.identity import Caller
from titanic.protocol.tsp import (
    BatchItem,
    FollowPage,
    build_batch,
    parse_follow_answer,
    parse_status,
)
from titanic.store import NewRequest, RequestStatus
from titanic.testing import MemoryStore, answer_requests


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def submit(store: MemoryStore, *frames: bytes) -> str:
    [reply] = answer_requests(store, [list(frames)])
    assert reply[0] == b"200", reply
    return reply[1].decode()


def test_request_is_stored_before_200_and_keeps_every_frame(store: MemoryStore) -> None:
    request_id = submit(store, b"echo", b"", b"two", b"\x00\xff")
    stored = store.get(request_id)
    assert stored is not None
    assert stored.service == "echo"
    assert stored.request == (b"", b"two", b"\x00\xff")
    assert stored.status is RequestStatus.PENDING
    assert len(request_id) == 32 and int(request_id, 16) >= 0


def test_a_batch_with_one_bad_request_stores_the_others(store: MemoryStore) -> None:
    replies = answer_requests(store, [[b"echo", b"a"], [], [b"\xff\xfe"], [b"echo", b"b"]])
    codes = [parse_status(reply[0]) for reply in replies]
    assert codes == [200, 400, 400, 200]
    stored = {store.get(r[1].decode()).request for r in (replies[0], replies[3])}  # type: ignore[union-attr]
    assert stored == {(b"a",), (b"b",)}


def test_reply_is_pending_then_the_stored_frames(store: MemoryStore) -> None:
    request_id = submit(store, b"echo", b"hi")
    assert handle_reply(store, [request_id.encode()])[0].startswith(b"300")
    [claimed] = store.claim_due(["echo"], 10, 30)
    assert claimed.id == request_id
    assert handle_reply(store, [request_id.encode()])[0].startswith(b"300")
    assert store.complete(request_id, [b"x", b""])
    assert handle_reply(store, [request_id.encode()]) == [b"200", b"x", b""]
    # fetching does not delete the reply
    assert handle_reply(store, [request_id.encode()]) == [b"200", b"x", b""]


def test_unknown_and_malformed_uuids_answer_400(store: MemoryStore) -> None:
    assert handle_reply(store, [b"0" * 32]) == [b"400", b"unknown"]
    assert handle_reply(store, [b"not-a-uuid"]) == [b"400", b"unknown"]
    assert handle_reply(store, []) == [b"400", b"unknown"]


def test_a_failed_request_says_why(store: MemoryStore) -> None:
    request_id = submit(store, b"echo", b"hi")
    store.claim_due(None, 10, 30)
    store.fail(request_id, "worker exploded")
    status, text = handle_reply(store, [request_id.encode()])
    assert parse_status(status) == 400
    assert (status, text) == (b"400", b"failed: worker exploded")


def test_close_deletes_and_is_idempotent(store: MemoryStore) -> None:
    request_id = submit(store, b"echo", b"hi")
    assert handle_close(store, [request_id.encode()]) == [b"200"]
    assert store.get(request_id) is None
    assert handle_reply(store, [request_id.encode()]) == [b"400", b"unknown"]
    assert handle_close(store, [request_id.encode()]) == [b"200"]
    assert handle_close(store, [b"rubbish"]) == [b"200"]


ALICE, BOB, ROOT = Caller("A" * 40), Caller("B" * 40), Caller("R" * 40, admin=True)


def submit_as(store: MemoryStore, caller: Caller | None, *frames: bytes) -> str:
    [(status, request_id)] = answer_requests(store, [list(frames)], [caller])
    assert status == b"200"
    return request_id.decode()


def test_another_key_is_answered_as_for_an_unknown_uuid(store: MemoryStore) -> None:
    request_id = submit_as(store, ALICE, b"echo", b"secret")
    store.complete(request_id, [b"answer"])
    uuid = [request_id.encode()]
    assert store.get(request_id).owner == ALICE.key  # type: ignore[union-attr]
    assert handle_reply(store, uuid, BOB) == handle_reply(store, [b"0" * 32], BOB)
    assert handle_reply(store, uuid, None) == [b"400", b"unknown"]  # no identity owns nothing
    assert handle_close(store, uuid, BOB) == [b"200"]  # as for an unknown UUID...
    assert handle_close(store, uuid, None) == [b"200"]
    assert handle_reply(store, uuid, ALICE) == [b"200", b"answer"]  # ...and nothing was closed
    assert handle_reply(store, uuid, ROOT) == [b"200", b"answer"]  # an admin sees every one
    assert handle_close(store, uuid, ALICE) == [b"200"]
    assert store.get(request_id) is None


def test_admin_closes_any_request_and_unowned_ones_are_anyones(store: MemoryStore) -> None:
    alices = submit_as(store, ALICE, b"echo", b"a")
    assert handle_close(store, [alices.encode()], ROOT) == [b"200"]
    assert store.get(alices) is None
    unowned = submit_as(store, None, b"echo", b"b")  # stored without CURVE
    assert handle_reply(store, [unowned.encode()], BOB) == [b"300", b"pending"]
    assert handle_close(store, [unowned.encode()], BOB) == [b"200"]
    assert store.get(unowned) is None


def test_requests_beyond_a_keys_stored_limit_get_503() -> None:
    bodies = [[b"echo", b"%d" % n] for n in range(4)]
    callers = [ALICE, BOB, ALICE, None]
    accepted, answers = check_requests(bodies, 1000, callers)
    kept = refuse_over_owner_limit(answers, accepted, {ALICE.key: 1, BOB.key: 5}, limit=2)
    assert [index for index, _ in kept] == [0, 3]  # alice's second goes over; bob is over
    assert answers[1] == answers[2] == [
        b"503", b"too many stored requests for this key (limit 2): retry later"]


def test_idempotency_keys_of_different_owners_never_meet(store: MemoryStore) -> None:
    keyed = [b"", b"order-42", b"echo", b"x"]
    alices = submit_as(store, ALICE, *keyed)
    assert submit_as(store, ALICE, *keyed) == alices  # alice's retry: the same request
    bobs = submit_as(store, BOB, *keyed)  # bob learns nothing of alice's, and is not blocked
    assert bobs != alices
    assert store.get(bobs).owner == BOB.key  # type: ignore[union-attr]
    long_key = [b"", b"k" * 255, b"echo", b"x"]
    assert submit_as(store, ALICE, *long_key) == submit_as(store, ALICE, *long_key)


# -- the batch form -------------------------------------------------------------------------------

def batch(*items: tuple[tuple[bytes, ...], str | None]) -> list[bytes]:
    return build_batch(b"echo", [BatchItem(frames, key) for frames, key in items])


def test_a_batch_is_answered_with_its_uuids_in_order(store: MemoryStore) -> None:
    lone = submit(store, b"echo", b"before")
    [answer, other] = answer_requests(store, [
        batch(((b"a",), None), ((b"b", b"2"), "k"), ((b"c",), "k"), ((), None)),
        [b"echo", b"after"]])
    assert answer[0] == b"200" and len(answer) == 5
    ids = [frame.decode() for frame in answer[1:]]
    assert ids[1] == ids[2], "a key repeated within a batch names the first request"
    assert [store.get(i).request for i in ids] == [  # type: ignore[union-attr]
        (b"a",), (b"b", b"2"), (b"b", b"2"), ()]
    assert other[0] == b"200" and len({lone, other[1].decode(), *ids}) == 5


def test_a_batch_is_refused_whole(store: MemoryStore) -> None:
    over_limit = batch(((b"x" * 600,), None), ((b"y" * 600,), None))
    bad_key = [*batch(((b"a",), None)), b"1 \xff", b"b"]
    answers = answer_requests(store, [over_limit, bad_key, [b"", b"", b""],
                                      [b"", b"", b"echo"], [b"", b"", b"echo", b"x"]])
    assert [answer[0] for answer in answers] == [b"200", b"400", b"400", b"400", b"400"]
    assert b"batch request 2: the idempotency key is not UTF-8" in answers[1][1]
    assert b"at least one request" in answers[3][1]
    assert b"bad head frame" in answers[4][1]
    small = MemoryStore(max_request_bytes=1000)
    [refused] = answer_requests(small, [over_limit])
    assert refused[0] == b"400" and b"1200 bytes" in refused[1]
    assert small.stats().counts == {}


def test_a_batch_over_a_keys_stored_limit_is_refused_whole() -> None:
    bodies = [batch(((b"1",), None), ((b"2",), None)), [b"echo", b"3"],
              batch(((b"4",), None), ((b"5",), None), ((b"6",), None))]
    accepted, answers = check_requests(bodies, 1000, [ALICE, ALICE, ALICE])
    kept = refuse_over_owner_limit(answers, accepted, {ALICE.key: 1}, limit=4)
    assert [index for index, _ in kept] == [0, 0, 1]
    assert answers[2] is not None and answers[2][0] == b"503"


# -- the follow form of titanic.wait ---------------------------------------------------------

def streaming(store: MemoryStore, parts: list[list[bytes]]) -> str:
    [request_id] = store.exchange([NewRequest("s", (b"x",))], [], {}, 30.0,
                                  claim_new={"s": 1}).ids
    store.exchange([], [], {}, 30.0, parts=[(request_id, seq, frames)
                                            for seq, frames in enumerate(parts, 1)])
    return request_id


def follow(store: MemoryStore, request_id: str, after: int) -> FollowPage:
    return parse_follow_answer(handle_follow(store, request_id.encode(), after))


def test_a_follow_gives_the_parts_after_a_number_and_whether_done(store: MemoryStore) -> None:
    request_id = streaming(store, [[b"a"], [b"b", b"c"]])
    assert follow(store, request_id, 0) == FollowPage(False, [(1, (b"a",)), (2, (b"b", b"c"))])
    assert follow(store, request_id, 2) == FollowPage(False, [])
    store.complete(request_id, [b"a", b"b", b"c"])
    assert follow(store, request_id, 1) == FollowPage(True, [(2, (b"b", b"c"))])
    assert handle_follow(store, b"0" * 32, 0) == [b"400", b"unknown"]


def test_a_done_reply_whose_parts_do_not_match_it_is_followed_whole(store: MemoryStore) -> None:
    cut_short = streaming(store, [[b"a"]])  # its later PARTIALs were never stored
    store.complete(cut_short, [b"a", b"b", b"c"])
    assert follow(store, cut_short, 1) == FollowPage(True, [(2, (b"b", b"c"))])
    stale = streaming(store, [[b"old"]])  # an earlier attempt's part
    store.complete(stale, [b"new"])
    assert follow(store, stale, 0) == FollowPage(True, [(1, (b"new",))])
    plain = submit(store, b"echo", b"p")
    store.exchange([], [], {"echo": 1}, 30.0)
    store.complete(plain, [b"whole", b"reply"])
    assert follow(store, plain, 0) == FollowPage(True, [(1, (b"whole", b"reply"))])
    assert follow(store, plain, 1) == FollowPage(True, [])


def test_cancel_answers_the_state_it_was_in_and_keeps_to_the_owner(store: MemoryStore) -> None:
    (owned,) = store.submit_many([NewRequest("svc", (b"x",), owner="alice")])
    alice, mallory, admin = Caller("alice"), Caller("mallory"), Caller("root", admin=True)
    assert handle_cancel(store, [owned.encode()], mallory) == [b"400", b"unknown"]
    assert handle_cancelled(store, [owned.encode()], mallory) == [b"200", b"no"]
    assert handle_cancel(store, [owned.encode()], alice) == [b"200", b"pending"]
    assert handle_cancel(store, [owned.encode()], admin) == [b"200", b"cancelled"]
    assert handle_cancelled(store, [owned.encode()], None) == [b"200", b"yes"]
    assert handle_reply(store, [owned.encode()], alice)[0] == b"400"
    assert handle_reply(store, [owned.encode()], alice)[1].startswith(b"cancelled: ")
    for junk in ([], [b"not a uuid"], [owned.encode(), b"extra"]):
        assert handle_cancel(store, junk, admin) == [b"400", b"unknown"]
        assert handle_cancelled(store, junk, admin) == [b"200", b"no"]
