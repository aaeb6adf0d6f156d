"""The TSP handlers against the in-memory store: no sockets."""

from __future__ import annotations

import pytest

from titanic.protocol.tsp import parse_status
from titanic.services import handle_close, handle_reply, handle_requests
from titanic.store import RequestStatus
from titanic.testing import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def submit(store: MemoryStore, *frames: bytes) -> str:
    [reply] = handle_requests(store, [list(frames)])
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
    replies = handle_requests(store, [[b"echo", b"a"], [], [b"\xff\xfe"], [b"echo", b"b"]])
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
    assert handle_reply(store, [b"0" * 32]) == [b"400 unknown"]
    assert handle_reply(store, [b"not-a-uuid"]) == [b"400 unknown"]
    assert handle_reply(store, []) == [b"400 unknown"]


def test_a_failed_request_says_why(store: MemoryStore) -> None:
    request_id = submit(store, b"echo", b"hi")
    store.claim_due(None, 10, 30)
    store.fail(request_id, "worker exploded")
    [status] = handle_reply(store, [request_id.encode()])
    assert parse_status(status) == 400
    assert status == b"400 failed: worker exploded"


def test_close_deletes_and_is_idempotent(store: MemoryStore) -> None:
    request_id = submit(store, b"echo", b"hi")
    assert handle_close(store, [request_id.encode()]) == [b"200"]
    assert store.get(request_id) is None
    assert handle_reply(store, [request_id.encode()]) == [b"400 unknown"]
    assert handle_close(store, [request_id.encode()]) == [b"200"]
    assert handle_close(store, [b"rubbish"]) == [b"200"]
