"""Encryption at rest on SQLite and PostgreSQL: what the database holds, rotation, and a body
that cannot be opened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from titanic.errors import StoreError
from titanic.store import RequestStatus, SqlStore, open_store
from titanic.store.crypto import is_sealed, key_id, load_store_keys, write_store_key
from titanic.store.models import reply_parts_table as parts
from titanic.store.models import requests_table as t

SECRET = b"the launch code is 0000"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite"
                                       else "postgres_url"))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "store.key"
    write_store_key(path)
    return path


@pytest.fixture
def stores() -> Iterator[list[SqlStore]]:
    opened: list[SqlStore] = []
    yield opened
    for store in opened:
        store.close_store()


def raw_bodies(url: str) -> list[tuple[str, bytes, bytes | None]]:
    """What someone with the database, and no key, reads."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [(row.id.hex, row.request, row.reply)
                    for row in conn.execute(select(t.c.id, t.c.request, t.c.reply))]
    finally:
        engine.dispose()


def test_bodies_are_sealed_in_the_database_and_open_with_the_key(
        url: str, key_file: Path, stores: list[SqlStore]) -> None:
    store = open_store(url, store_key=key_file)
    stores.append(store)
    request_id = store.submit("svc", [SECRET, b"second frame"])
    [delivery] = store.exchange([], [], {"svc": 1}, 30).claimed
    assert delivery.request == (SECRET, b"second frame")
    store.complete(request_id, [b"reply: " + SECRET])
    [(_, request, reply)] = raw_bodies(url)
    assert reply is not None and is_sealed(request) and is_sealed(reply)
    assert SECRET not in request and SECRET not in reply
    stored = store.get(request_id)
    assert stored is not None and stored.reply == (b"reply: " + SECRET,)
    without_key = open_store(url)
    stores.append(without_key)
    with pytest.raises(StoreError, match="encrypted: give the store key"):
        without_key.get(request_id)


def test_rotation_reseals_every_body_then_the_old_key_can_go(
        url: str, key_file: Path, stores: list[SqlStore]) -> None:
    plain = open_store(url)  # rows from before encryption was turned on
    stores.append(plain)
    before = plain.submit("svc", [b"plain " + SECRET])
    old = open_store(url, store_key=key_file)
    stores.append(old)
    sealed = old.submit("svc", [SECRET])
    old.complete(sealed, [b"done"])
    write_store_key(key_file, rotate=True)
    new_key, old_key = load_store_keys(key_file)
    rotated = open_store(url, store_key=key_file)
    stores.append(rotated)
    assert rotated.rekey(batch=1) == 3  # the plain request, the old-key request and reply
    assert rotated.rekey() == 0
    assert all(blob[1:5] == key_id(new_key) for _, request, reply in raw_bodies(url)
               for blob in (request, reply) if blob is not None)
    key_file.write_text(new_key.hex() + "\n")  # the old key removed
    only_new = open_store(url, store_key=key_file)
    stores.append(only_new)
    assert only_new.get(before).request == (b"plain " + SECRET,)  # type: ignore[union-attr]
    assert only_new.get(sealed).reply == (b"done",)  # type: ignore[union-attr]
    assert old_key != new_key


def test_a_request_that_cannot_be_opened_fails_instead_of_blocking_its_service(
        url: str, key_file: Path, tmp_path: Path, stores: list[SqlStore]) -> None:
    writer = open_store(url, store_key=key_file)
    stores.append(writer)
    lost = writer.submit("svc", [SECRET])
    other_key = tmp_path / "other.key"
    write_store_key(other_key)
    reader = open_store(url, store_key=other_key)  # a dispatcher given the wrong key
    stores.append(reader)
    readable = reader.submit("svc", [b"fine"])
    claimed = reader.exchange([], [], {"svc": 10}, 30).claimed
    assert [delivery.id for delivery in claimed] == [readable]
    failed = writer.get(lost)
    assert failed is not None and failed.status is RequestStatus.FAILED
    assert "not in the store key file" in (failed.last_error or "")


def test_parts_of_streamed_replies_are_sealed_and_resealed(
        url: str, key_file: Path, stores: list[SqlStore]) -> None:
    old = open_store(url, store_key=key_file)
    stores.append(old)
    request_id = old.submit("svc", [b"x"])
    old.exchange([], [], {"svc": 1}, 30)
    old.exchange([], [], {}, 30, parts=[(request_id, 1, [SECRET]), (request_id, 2, [b"two"])])
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            blobs = [row.frames for row in conn.execute(select(parts.c.frames))]
    finally:
        engine.dispose()
    assert len(blobs) == 2 and all(is_sealed(blob) and SECRET not in blob for blob in blobs)
    write_store_key(key_file, rotate=True)
    new_key, _ = load_store_keys(key_file)
    rotated = open_store(url, store_key=key_file)
    stores.append(rotated)
    assert rotated.rekey(batch=1) == 3  # the request and the two parts
    key_file.write_text(new_key.hex() + "\n")  # the old key removed
    only_new = open_store(url, store_key=key_file)
    stores.append(only_new)
    assert only_new.parts_after(request_id, 0) == [(1, (SECRET,)), (2, (b"two",))]
