"""Migrations from the installed package: fresh upgrade, schema equals models, newer refused."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from titanic.errors import SchemaError
from titanic.store import NewRequest, migrate, open_existing_store, open_store
from titanic.store.dialect import make_engine
from titanic.store.frames import encode_frames


def test_fresh_database_is_brought_to_head_and_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert migrate.current_revision(engine) is None
        with pytest.raises(SchemaError, match="db upgrade"):
            migrate.check(engine)
        migrate.ensure_schema(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check(engine)  # alembic's comparison finds no difference
    finally:
        engine.dispose()


def test_a_database_from_a_newer_titanic_is_refused(db_url: str) -> None:
    open_store(db_url).close_store()
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
        with pytest.raises(SchemaError, match="newer than this titanic"):
            open_store(db_url)
    finally:
        engine.dispose()


def test_db_commands_work_from_any_folder(db_url: str, tmp_path: Path) -> None:
    def titanic_db(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-P", "-m", "titanic_cli", "db", *args, "--db", db_url]
        return subprocess.run(argv,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": ""}, check=False)

    assert titanic_db("current").stdout.strip() == "none"
    checked = titanic_db("check")
    assert checked.returncode == 7 and checked.stderr.count("\n") == 1
    assert titanic_db("upgrade").returncode == 0
    assert titanic_db("current").stdout.strip() == migrate.head_revision()
    assert titanic_db("check").returncode == 0


def test_stores_opened_together_on_a_fresh_database_all_migrate(db_url: str) -> None:
    # Several dispatchers first started at once (a high-availability pair, say): every one
    # must come up, none may fail on a table another one just made.
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_together() -> None:
        barrier.wait(30)
        try:
            open_store(db_url).close_store()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_together) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    engine = make_engine(db_url)
    try:
        migrate.check(engine)
    finally:
        engine.dispose()


def test_the_partial_indexes_migration_keeps_every_row_and_the_keys_unique(db_url: str) -> None:
    # 0016 rebuilds the SQLite table to drop the UNIQUE constraint of idempotency keys: a store
    # in use (requests with and without keys, owned, finished) must come through it whole.
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0015_owner_index_partial")
        rows = [("a" * 32, "echo", "pending", None, None, None),
                ("b" * 32, "echo", "pending", "key-1", None, None),
                ("c" * 32, "other", "done", None, "owner-1", "2026-12-01 10:00:00"),
                ("d" * 32, "other", "dispatched", "key-2", "owner-1", None)]
        with engine.begin() as conn:
            for request_id, service, status, key, owner, completed in rows:
                conn.execute(text(
                    "INSERT INTO titanic_requests (id, service, request, status, attempts, "
                    "created_at, due_at, completed_at, idempotency_key, owner) VALUES (:id, "
                    ":service, :request, :status, 1, '2026-12-01 09:00:00', "
                    "'2026-12-01 09:00:00', :completed, :key, :owner)"),
                    {"id": request_id, "service": service, "request": b"body", "status": status,
                     "completed": completed, "key": key, "owner": owner})
        migrate.ensure_schema(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check(engine)
        with engine.begin() as conn:
            kept = conn.execute(text(
                "SELECT id, service, status, idempotency_key, owner, request "
                "FROM titanic_requests ORDER BY id")).all()
            # (PostgreSQL's ids are of its uuid type.)
            assert [(str(row[0]).replace("-", ""), *row[1:5]) for row in kept] == [
                row[:5] for row in rows]
            assert {bytes(row[5]) for row in kept} == {b"body"}
            conn.execute(text(
                "INSERT INTO titanic_requests (id, service, request, status, attempts, "
                "created_at, due_at) VALUES (:id, 'echo', :body, 'pending', 0, "
                "'2026-12-01 09:00:00', '2026-12-01 09:00:00')"),
                {"id": "e" * 32, "body": b"x"})  # a second request without a key is fine
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO titanic_requests (id, service, request, status, attempts, "
                "created_at, due_at, idempotency_key) VALUES (:id, 'echo', :body, 'pending', 0, "
                "'2026-12-01 09:00:00', '2026-12-01 09:00:00', 'key-1')"),
                {"id": "f" * 32, "body": b"x"})
    finally:
        engine.dispose()


def test_the_scripts_newest_revision_read_without_alembic_is_alembics_head() -> None:
    assert migrate.newest_script_revision() == migrate.head_revision()


def test_a_database_one_revision_behind_is_refused_by_read_only_commands(db_url: str) -> None:
    open_store(db_url).close_store()
    engine = make_engine(db_url)
    try:  # the revision before the newest, as an older titanic left it
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0016_partial_indexes'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaError, match="is at schema revision 0016_partial_indexes, not "):
        open_existing_store(db_url)  # read-only: refused, naming `titanic db upgrade`


def test_the_forwards_migration_keeps_every_request(db_url: str) -> None:
    # 0021 adds the table of requests sent to other sites beside a store in use.
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0017_drop_status_due_index")
        with engine.begin() as conn:
            for request_id, status in (("a" * 32, "pending"), ("b" * 32, "dispatched"),
                                       ("c" * 32, "done")):
                conn.execute(text(
                    "INSERT INTO titanic_requests (id, service, request, status, attempts, "
                    "created_at, due_at) VALUES (:id, 'echo', :body, :status, 1, "
                    "'2026-12-08 09:00:00', '2026-12-08 09:00:00')"),
                    {"id": request_id, "body": b"body", "status": status})
        migrate.ensure_schema(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check(engine)
        with engine.begin() as conn:
            kept = conn.execute(text("SELECT status FROM titanic_requests ORDER BY id")).all()
            assert [row[0] for row in kept] == ["pending", "dispatched", "done"]
            assert conn.execute(text("SELECT count(*) FROM titanic_forwards")).scalar() == 0
        store = open_store(db_url)
        try:
            store.record_forwards([("b" * 32, "lyon", "d" * 32)])
            assert store.forwards_of("lyon") == [("b" * 32, "d" * 32)]
        finally:
            store.close_store()
    finally:
        engine.dispose()


def test_the_priority_migration_keeps_a_backlog_claimable_in_order(db_url: str) -> None:
    # 0018 adds the priority column (0 for the stored requests) and rebuilds the service
    # index: a store of 0017 with requests waiting, in flight and done comes through whole.
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0017_drop_status_due_index")
        rows = [("a" * 32, "pending", "2026-12-01 09:00:02"),
                ("b" * 32, "dispatched", "2026-12-01 09:00:00"),
                ("c" * 32, "done", "2026-12-01 09:00:00"),
                ("d" * 32, "pending", "2026-12-01 09:00:01")]
        with engine.begin() as conn:
            for request_id, status, due in rows:
                conn.execute(text(
                    "INSERT INTO titanic_requests (id, service, request, status, attempts, "
                    "created_at, due_at) VALUES (:id, 'echo', :request, :status, 0, "
                    "'2026-12-01 09:00:00', :due)"),
                    {"id": request_id, "request": encode_frames([b"body"]), "status": status,
                     "due": due})
    finally:
        engine.dispose()
    store = open_store(db_url)
    try:
        assert migrate.current_revision(store.engine) == migrate.head_revision()
        migrate.check(store.engine)
        kept = {request_id: store.get(request_id) for request_id, _, _ in rows}
        assert {r.id: (r.status.value, r.priority, r.request) for r in kept.values() if r} == {
            request_id: (status, 0, (b"body",)) for request_id, status, _ in rows}
        high = store.submit_many([NewRequest("echo", (b"x",), priority=1)])[0]
        assert [r.id for r in store.claim_due(["echo"], 10, 60)] == [high, "d" * 32, "a" * 32]
    finally:
        store.close_store()


def test_the_limits_migration_adds_an_empty_table_beside_a_backlog(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0018_request_priority")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO titanic_requests (id, service, request, status, attempts, "
                "created_at, due_at, priority) VALUES (:id, 'echo', :request, 'pending', 0, "
                "'2026-12-01 09:00:00', '2026-12-01 09:00:00', 3)"),
                {"id": "a" * 32, "request": encode_frames([b"body"])})
    finally:
        engine.dispose()
    store = open_store(db_url)
    try:
        assert migrate.current_revision(store.engine) == migrate.head_revision()
        migrate.check(store.engine)
        assert store.limits() == []
        store.set_limit("echo", max_in_flight=1)
        (claimed,) = store.claim_due(["echo"], 10, 60)
        assert (claimed.id, claimed.priority, claimed.request) == ("a" * 32, 3, (b"body",))
    finally:
        store.close_store()
