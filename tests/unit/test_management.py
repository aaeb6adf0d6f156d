"""titanic.manage answered from a MemoryStore: the view per service, bulk actions, refusals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from titanic.dispatch.management import ManagementService
from titanic.protocol import manage
from titanic.store import RequestStatus
from titanic.testing import MemoryStore
from titanic_cli.manage_commands import parse_duration


def ask(service: ManagementService, command: str,
        arguments: dict[str, object] | None = None) -> tuple[int, str, dict[str, object]]:
    body = [command.encode(), json.dumps(arguments or {}).encode()]
    return manage.parse_reply(service.handle(body))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def service(store: MemoryStore) -> ManagementService:
    return ManagementService(store, lambda: {"version": "test"})


def test_info_counts_each_state_per_service_with_oldest_age_and_rate(
        store: MemoryStore, service: ManagementService) -> None:
    store.submit("resize", [b"1"])
    store.submit("resize", [b"2"])
    done = store.submit("mail", [b"3"])
    store.complete(done, [b"ok"])
    assert store.fail(store.submit("mail", [b"4"]), "ValueError: bad input")
    code, _, view = ask(service, "info", {"window_s": 10})
    assert code == 200
    assert view["dispatcher"] == {"version": "test"} and view["window_s"] == 10
    rows = {row["service"]: row for row in view["services"]}  # type: ignore[attr-defined]
    assert rows["resize"]["pending"] == 2 and rows["resize"]["done"] == 0
    assert rows["resize"]["oldest_pending_age_s"] >= 0
    assert rows["mail"]["done"] == 1 and rows["mail"]["failed"] == 1
    assert rows["mail"]["oldest_pending_age_s"] is None
    assert rows["mail"]["completed_per_s"] == pytest.approx(0.1)


def test_failed_lists_last_errors_and_retry_one_or_all(store: MemoryStore,
                                                       service: ManagementService) -> None:
    ids = [store.submit(name, [b"x"]) for name in ("a", "a", "b")]
    for request_id in ids:
        store.fail(request_id, "ValueError: bad input")
    code, _, listed = ask(service, "failed", {"service": "a"})
    assert code == 200
    assert [(r["uuid"], r["last_error"]) for r in listed["requests"]] == [  # type: ignore[attr-defined]
        (ids[0], "ValueError: bad input"), (ids[1], "ValueError: bad input")]
    assert ask(service, "retry", {"uuid": ids[2]})[2]["count"] == 1
    assert ask(service, "retry", {"uuid": ids[2]})[2]["count"] == 0  # pending now
    assert ask(service, "retry", {"state": "failed", "dry_run": True})[2]["count"] == 2
    assert store.stats().by_status()[RequestStatus.FAILED] == 2
    assert ask(service, "retry", {"state": "failed", "service": "a"})[2]["count"] == 2
    assert store.stats().by_status() == {RequestStatus.PENDING: 3}


def test_purge_deletes_only_old_finished_requests(store: MemoryStore,
                                                  service: ManagementService) -> None:
    request_id = store.submit("a", [b"x"])
    store.complete(request_id, [b"r"])
    assert ask(service, "purge", {"state": "done", "older_than_s": 3600})[2]["count"] == 0
    assert ask(service, "purge", {"state": "done", "older_than_s": 0, "dry_run": True}
               )[2]["count"] == 1
    assert store.get(request_id) is not None
    assert ask(service, "purge", {"state": "done", "older_than_s": 0})[2]["count"] == 1
    assert store.get(request_id) is None


@pytest.mark.parametrize(("body", "why"), [
    ([b"drop tables"], "unknown command"),
    ([b"info", b"{not json"], "not JSON"),
    ([b"info", b"[1, 2]"], "not a JSON object"),
    ([b"retry", b'{"state": "done"}'], "state must be one of failed, expired"),
    ([b"purge", b'{"state": "pending"}'], "state must be one of done, failed, expired"),
    ([b"purge", b'{"older_than_s": "1d"}'], "wrong type"),
    ([b"purge", b'{"older_than_s": -1}'], "0 or more"),
    ([b"retry", b'{"uuid": "nope"}'], "UUID"),
    ([b"info", b"{}", b"extra"], "a command frame and an arguments frame"),
    ([], "a command frame"),
])
def test_a_malformed_request_is_refused_with_400_saying_why(
        service: ManagementService, body: list[bytes], why: str) -> None:
    code, text, _ = manage.parse_reply(service.handle(body))
    assert code == 400
    assert why in text


def test_describe_says_which_dispatcher_answers_without_reading_the_store(
        service: ManagementService) -> None:
    service.store = None  # type: ignore[assignment]  # describe must not touch it
    assert ask(service, "describe") == (200, "", {"dispatcher": {"version": "test"}})


def test_durations_take_units() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("1d") == 86400
    assert parse_duration("1.5h") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("yesterday")


def test_summary_rate_window_is_the_one_asked(store: MemoryStore) -> None:
    request_id = store.submit("a", [b"x"])
    store.complete(request_id, [b"r"])
    assert store.summary(since=datetime.now(UTC) + timedelta(seconds=5))[0].completed_since == 0
