"""PostgreSQL's plan for a claim: the due rows read in claim order (highest priority, then
oldest due) from an index, never sorted.

A claim runs every dispatcher turn. If its plan sorts the pending rows, each claim costs time in
proportion to the backlog (20 ms per claim with 50,000 waiting, against 0.1 ms), so the plan is
pinned here, on a table just filled (no statistics yet) and after ANALYZE, as a custom plan and
as the generic plan a prepared statement may switch to. On SQLite a claim of several services
probes each service's part of the index too. The dispatcher's survey of which services have
requests due (every second) probes the same index once or twice per service, on both
databases, rather than reading every waiting row.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy.dialects import postgresql, sqlite

from titanic.store import NewRequest, SqlStore, open_store
from titanic.store.hot import HotStatements
from titanic.store.models import requests_table
from titanic.store.sql import due_services_statement

TABLE = requests_table.name
SERVICE_INDEX = "ix_titanic_requests_status_service_priority_due"
BACKLOG_PER_SERVICE = 12_000
SHAPES: list[Sequence[str]] = [["echo"], ["echo", "other"]]
#: The backlog's priorities: a claim takes the highest first, read in that order from the index.
PRIORITIES = (0, 5, -1)


@pytest.fixture
def backlog(postgres_url: str) -> Iterator[tuple[SqlStore, psycopg.Connection[Any]]]:
    """A store whose table holds a fresh backlog of two services, and a raw connection to it."""
    store = open_store(postgres_url)
    body = (b"x" * 100,)
    for _ in range(0, BACKLOG_PER_SERVICE, 2_000):
        store.submit_many([NewRequest(service, body, priority=PRIORITIES[index % 3])
                           for index in range(1_000) for service in ("echo", "other")])
    # Some finished rows too, as a store in use has.
    for claimed in (store.claim_due(["echo"], 500, 60), store.claim_due(["other"], 500, 60)):
        store.complete_many([(request.id, [b"done"]) for request in claimed])
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            yield store, conn
        finally:
            store.close_store()


def _explain(conn: psycopg.Connection[Any], services: Sequence[str],
             generic: bool) -> dict[str, Any]:
    """The claim's plan, as PREPARE/EXECUTE would run it with the given plan cache mode."""
    now = datetime.now(UTC).replace(tzinfo=None)
    statement, params = HotStatements("postgresql").claim_statement(
        services, 32, now + timedelta(seconds=60), now)
    numbered = iter(range(1, len(params) + 1))
    prepared = re.sub(r"%s", lambda _: f"${next(numbered)}", statement)
    literals = pgsql.SQL(", ").join(pgsql.Literal(value) for value in params).as_string(conn)
    mode = "force_generic_plan" if generic else "force_custom_plan"
    conn.execute(f"SET plan_cache_mode = {mode}")
    conn.execute("DEALLOCATE ALL")
    conn.execute(f"PREPARE claim AS {prepared}")
    row = conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE claim({literals})").fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def _nodes(node: dict[str, Any], limited: bool = False
           ) -> Iterator[tuple[dict[str, Any], bool]]:
    """Every node of a plan, with whether a Limit stands between it and the nearest Sort."""
    yield node, limited
    kind = node["Node Type"]
    below = True if kind == "Limit" else False if kind == "Sort" else limited
    for child in node.get("Plans", []):
        yield from _nodes(child, below)


def _check_claim_plan(plan: dict[str, Any]) -> None:
    nodes = list(_nodes(plan))
    scans = [node for node, _ in nodes if _reads_the_table(node)]
    # Every read of the table is an index scan: no sequential scan, no (unordered) bitmap
    # scan; the rows to update are found again by primary key.
    assert scans and all(scan["Node Type"] == "Index Scan" for scan in scans), plan
    due = [scan for scan in scans if scan["Index Name"] != f"pk_{TABLE}"]
    assert due, plan
    for scan in due:
        assert scan["Index Name"] == SERVICE_INDEX, plan
        assert "'pending'" in scan["Index Cond"], plan
    # A Sort may only merge the few rows each service's probe returned (a Limit under it).
    for node, _ in nodes:
        if node["Node Type"] == "Sort":
            unlimited = [below for below, limited in _nodes(node)
                         if _reads_the_table(below) and not limited]
            assert not unlimited, plan


def _reads_the_table(node: dict[str, Any]) -> bool:
    return node.get("Relation Name") == TABLE and node["Node Type"] != "ModifyTable"


@pytest.fixture(params=[False, True], ids=["fresh", "analyzed"])
def table(request: pytest.FixtureRequest, backlog: tuple[SqlStore, psycopg.Connection[Any]]
          ) -> tuple[SqlStore, psycopg.Connection[Any]]:
    """The backlog on a table never analyzed (skipped if autovacuum got there first), then
    after ANALYZE."""
    _, conn = backlog
    if request.param:
        conn.execute(f"ANALYZE {TABLE}")
    else:
        stats = conn.execute("SELECT last_analyze, last_autoanalyze FROM pg_stat_user_tables "
                             "WHERE relname = %s", (TABLE,)).fetchone()
        if stats is not None and any(stats):
            pytest.skip("autovacuum analyzed the table already")
    return backlog


@pytest.mark.postgres
def test_claims_read_the_index_in_due_order_without_sorting_the_backlog(
        table: tuple[SqlStore, psycopg.Connection[Any]]) -> None:
    _, conn = table
    for services in SHAPES:
        for generic in (False, True):
            _check_claim_plan(_explain(conn, services, generic))


def test_sqlite_claims_of_several_services_probe_each_service(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'titanic.db'}")
    try:
        store.submit_many([NewRequest("other", (b"x",))] * 2_000)
        store.submit_many([NewRequest("echo", (b"x",))] * 10)
    finally:
        store.close_store()
    now = datetime.now(UTC).replace(tzinfo=None)
    statement, params = HotStatements("sqlite").claim_statement(
        ["echo", "absent"], 32, now + timedelta(seconds=60), now)
    with closing(sqlite3.connect(tmp_path / "titanic.db")) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params)]
    reads = [step for step in plan if TABLE in step and ("SCAN" in step or "SEARCH" in step)]
    assert reads and all(SERVICE_INDEX in step or "PRIMARY KEY" in step or "(id=?)" in step
                         for step in reads), plan


@pytest.mark.postgres
def test_the_survey_of_due_services_probes_the_index_per_service(
        table: tuple[SqlStore, psycopg.Connection[Any]]) -> None:
    store, conn = table
    assert store.due_services() == {"echo", "other"}
    compiled = due_services_statement(datetime.now(UTC).replace(tzinfo=None)).compile(
        dialect=postgresql.dialect())  # type: ignore[no-untyped-call]
    row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", compiled.params).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    reads = [node for node, _ in _nodes(plan) if _reads_the_table(node)]
    assert reads and all(node["Node Type"] in ("Index Scan", "Index Only Scan")
                         and node["Index Name"] == SERVICE_INDEX for node in reads), plan
    # A few index entries for each (service, priority) waiting, of the 23,000 waiting.
    pairs = 2 * len(PRIORITIES)
    assert sum(node["Actual Rows"] * node["Actual Loops"] for node in reads) <= 6 * pairs, plan


def _survey_steps(path: Path) -> int:
    """How many SQLite virtual machine instructions the survey of due services runs."""
    compiled = due_services_statement(datetime.now(UTC).replace(tzinfo=None)).compile(
        dialect=sqlite.dialect())  # type: ignore[no-untyped-call]
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with closing(sqlite3.connect(path)) as conn:
        conn.set_progress_handler(count, 1)
        rows = conn.execute(str(compiled), [str(value) for value in params]).fetchall()
    assert {service for service, _ in rows} == {"echo", "other"}
    return steps


def test_sqlite_survey_of_due_services_does_not_grow_with_the_backlog(tmp_path: Path) -> None:
    path = tmp_path / "titanic.db"
    store = open_store(f"sqlite:///{path}")
    try:
        store.submit_many([NewRequest(service, (b"x",)) for service in ("echo", "other")] * 10)
        few = _survey_steps(path)
        store.submit_many([NewRequest("other", (b"x",))] * 5_000)
        assert store.due_services() == {"echo", "other"}
        # Reading every waiting row would take hundreds of times more.
        assert _survey_steps(path) <= 2 * few
    finally:
        store.close_store()


def test_sqlite_claims_take_priorities_from_the_index_without_a_sort(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'titanic.db'}")
    try:
        store.submit_many([NewRequest("echo", (b"x",), priority=PRIORITIES[index % 3])
                           for index in range(3_000)])
    finally:
        store.close_store()
    now = datetime.now(UTC).replace(tzinfo=None)
    with closing(sqlite3.connect(tmp_path / "titanic.db")) as conn:
        for services in SHAPES:
            statement, params = HotStatements("sqlite").claim_statement(
                services, 32, now + timedelta(seconds=60), now)
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params)]
            reads = [step for step in plan if TABLE in step]
            assert reads and all(SERVICE_INDEX in step or "PRIMARY KEY" in step
                                 or "(id=?)" in step for step in reads), plan
            # One service: no sort at all; several: only the merge of each probe's few rows.
            sorts = [step for step in plan if "TEMP B-TREE" in step]
            assert len(sorts) <= len(services) - 1, plan
