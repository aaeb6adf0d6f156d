"""Limits per service kept in the store, one contract on the three stores: max in flight and
a token bucket, honoured by every claim (of any store object on the same database)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from titanic_support import wait_until

from titanic.errors import InvalidRequestError
from titanic.store import NewRequest, Store, open_store
from titanic.testing import MemoryStore


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url_fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    sql = open_store(request.getfixturevalue(url_fixture))
    yield sql
    sql.close_store()


def _backlog(store: Store, count: int, service: str = "svc") -> list[str]:
    return store.submit_many([NewRequest(service, (b"x",)) for _ in range(count)])


def test_max_in_flight_caps_every_claim_until_replies_come(store: Store) -> None:
    store.set_limit("svc", max_in_flight=2)
    ids = _backlog(store, 5)
    _backlog(store, 3, "free")
    first = store.exchange([], [], {"svc": 10, "free": 10}, 60)
    assert sorted(d.id for d in first.claimed if d.service == "svc") == ids[:2]
    assert len([d for d in first.claimed if d.service == "free"]) == 3
    assert first.waits == {}  # held by max in flight: a reply frees it, not the clock
    assert store.exchange([], [], {"svc": 10}, 60).claimed == []
    assert len(store.claim_due(["svc"], 10, 60)) == 0
    done = store.exchange([], [(ids[0], [b"r"])], {"svc": 10}, 60)
    assert [d.id for d in done.claimed] == [ids[2]]


def test_a_rate_paces_claims_by_its_tokens_and_says_when_to_come_back(store: Store) -> None:
    store.set_limit("svc", rate=10.0, burst=3)
    _backlog(store, 10)
    now = datetime.now(UTC)
    first = store.exchange([], [], {"svc": 10}, 60, now=now)
    assert len(first.claimed) == 3  # the full bucket
    assert first.waits["svc"] == pytest.approx(0.1, abs=0.02)
    assert store.exchange([], [], {"svc": 10}, 60, now=now).claimed == []
    later = store.exchange([], [], {"svc": 10}, 60, now=now + timedelta(seconds=0.25))
    assert len(later.claimed) == 2  # 2.5 tokens came back
    assert later.waits["svc"] == pytest.approx(0.05, abs=0.02)
    assert len(store.claim_due(["svc"], 10, 60, now=now + timedelta(seconds=10))) == 3


def test_new_requests_of_a_limited_service_are_never_stored_claimed(store: Store) -> None:
    store.set_limit("svc", max_in_flight=1)
    done = store.exchange([NewRequest("svc", (b"a",)), NewRequest("svc", (b"b",))], [], {}, 60,
                          claim_new={"svc": 2})
    assert len(done.claimed) == 1


def test_limits_are_listed_replaced_and_cleared(store: Store) -> None:
    assert store.limits() == []
    store.set_limit("b", rate=5.0)
    store.set_limit("a", max_in_flight=3)
    store.set_limit("a", max_in_flight=4, rate=2.0, burst=2)
    listed = store.limits()
    assert [(x.service, x.max_in_flight, x.rate, x.burst) for x in listed] == [
        ("a", 4, 2.0, 2.0), ("b", None, 5.0, 1.0)]
    assert store.clear_limit("a") is True and store.clear_limit("a") is False
    assert [x.service for x in store.limits()] == ["b"]
    for bad in ({}, {"max_in_flight": -1}, {"rate": 0.0}, {"rate": 1.0, "burst": 0.5}):
        with pytest.raises(InvalidRequestError):
            store.set_limit("c", **bad)  # type: ignore[arg-type]


def test_two_stores_on_one_database_share_the_limit(db_url: str) -> None:
    store, other = open_store(db_url), open_store(db_url)
    try:
        _backlog(store, 6)
        other.set_limit("svc", max_in_flight=3)
        # The first store saw no limit a moment ago: it reads them again within a second.
        wait_until(lambda: "svc" in store.limited_services(),  # type: ignore[attr-defined]
                   timeout=5, message="the limit read again")
        taken = [len(s.exchange([], [], {"svc": 10}, 60).claimed) for s in (store, other, store)]
        assert taken == [3, 0, 0]
    finally:
        other.close_store()
        store.close_store()
