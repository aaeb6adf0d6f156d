"""The keyed titanic.request: wire form, parsing, one stored request per key."""

from __future__ import annotations

import pytest

from titanic.errors import ProtocolError
from titanic.protocol import tsp
from titanic.settings import broker_list
from titanic.store import NewRequest
from titanic.testing import MemoryStore, answer_requests


def test_plain_request_bodies_are_unchanged() -> None:
    body = tsp.build_request(b"echo", [b"a", b""])
    assert body == [b"echo", b"a", b""]
    assert tsp.split_request(body) == (None, body)


def test_keyed_request_round_trips() -> None:
    body = tsp.build_request(b"echo", [b"a"], "order-1234")
    assert body == [b"", b"order-1234", b"echo", b"a"]
    assert tsp.split_request(body) == ("order-1234", [b"echo", b"a"])


@pytest.mark.parametrize("body", [[b""], [b"", b""], [b"", b"\xff\xfe", b"echo"]])
def test_a_broken_key_header_is_a_protocol_error(body: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        tsp.split_request(body)


def test_a_key_repeated_in_one_batch_stores_one_request() -> None:
    store = MemoryStore()
    answers = answer_requests(store, [tsp.build_request(b"svc", [b"1"], "k"),
                                      tsp.build_request(b"svc", [b"2"], "k"),
                                      tsp.build_request(b"svc", [b"3"])])
    assert [answer[0] for answer in answers] == [b"200"] * 3
    assert answers[0][1] == answers[1][1] != answers[2][1]
    assert sum(store.stats().by_status().values()) == 2


def test_a_malformed_key_header_is_refused_with_400() -> None:
    answers = answer_requests(MemoryStore(), [[b"", b""]])
    assert answers[0][0] == b"400" and answers[0][1].startswith(b"bad request")


@pytest.mark.parametrize(("given", "expected"), [
    ("tcp://a:1", ["tcp://a:1"]),
    ("tcp://a:1, tcp://b:2,", ["tcp://a:1", "tcp://b:2"]),
    (["tcp://a:1,tcp://b:2", "tcp://c:3"], ["tcp://a:1", "tcp://b:2", "tcp://c:3"]),
])
def test_broker_lists(given: str | list[str], expected: list[str]) -> None:
    assert broker_list(given) == expected


def test_an_empty_broker_list_is_refused() -> None:
    with pytest.raises(ValueError, match="no broker"):
        broker_list(" , ")


def test_new_request_defaults_to_no_key() -> None:
    assert NewRequest("svc", ()).idempotency_key is None
