"""Database URLs and read-only commands: one line and exit 7, and nothing made behind your back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from titanic_support import run_cli

from titanic.errors import StoreError
from titanic.store.dialect import database_url

UUID = "0190c6f2a1b47c3e9d2f00112233aabb"
READ_ONLY = [["status", UUID], ["list"], ["retry", UUID], ["db", "check"]]


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text


@pytest.mark.parametrize("args", READ_ONLY)
def test_read_only_commands_never_create_a_folder_or_file(args: list[str],
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "not-yet"
    done = run_cli(*args, "--db", f"sqlite:///{folder / 'titanic.db'}")
    assert done.returncode == 7
    assert "titanic db upgrade" in one_line(done.stderr)
    assert not folder.exists()


@pytest.mark.parametrize("args", READ_ONLY)
def test_read_only_commands_never_make_tables_or_migrate(args: list[str],
                                                         tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    done = run_cli(*args, "--db", str(empty))  # a plain path: a SQLite file
    assert done.returncode == 7
    assert "titanic db upgrade" in one_line(done.stderr)
    with sqlite3.connect(empty) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_db_current_of_an_unmigrated_or_missing_file_is_none(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    done = run_cli("db", "current", "--db", str(empty))
    assert done.returncode == 0 and done.stdout == b"none\n"
    folder = tmp_path / "not-yet"
    missing = run_cli("db", "current", "--db", str(folder / "titanic.db"))
    assert missing.returncode == 0 and missing.stdout == b"none\n"
    assert not folder.exists()


def test_a_plain_path_is_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    assert run_cli("db", "upgrade", "--db", str(path)).returncode == 0
    assert path.is_file()
    listed = run_cli("list", "--db", str(path), "--json")
    assert listed.returncode == 0 and listed.stdout == b""
    unknown = run_cli("status", UUID, "--db", str(path))
    assert unknown.returncode == 4


@pytest.mark.parametrize("args", [["db", "upgrade"], ["status", UUID], ["list"]])
def test_an_unknown_database_kind_is_one_line(args: list[str]) -> None:
    done = run_cli(*args, "--db", "nosuchdb://x")
    assert done.returncode == 7
    assert "unknown database kind 'nosuchdb'" in one_line(done.stderr)


def test_database_url_forms() -> None:
    assert database_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    assert database_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert database_url("postgresql+psycopg://u@h/d").drivername == "postgresql+psycopg"
    path = database_url("some/file.db")
    assert path.drivername == "sqlite" and Path(str(path.database)).is_absolute()
    for bad in ("mysql://u@h/d", "postgresql+psycopg2://u@h/d", ""):
        with pytest.raises(StoreError):
            database_url(bad)


@pytest.mark.postgres
def test_postgres_scheme_is_postgresql(postgres_url: str) -> None:
    short = make_url(postgres_url).set(drivername="postgres").render_as_string(
        hide_password=False)
    done = run_cli("db", "upgrade", "--db", short)
    assert done.returncode == 0, done.stderr
    assert run_cli("list", "--db", short).returncode == 0


@pytest.mark.postgres
@pytest.mark.parametrize(("change", "says"), [
    ({"username": "titanic_no_such_role"}, "createuser"),
    ({"database": "titanic_no_such_db"}, "createdb"),
])
def test_a_missing_role_or_database_says_so(postgres_server: str, change: dict[str, str],
                                            says: str) -> None:
    url = make_url(postgres_server).set(**change).render_as_string(hide_password=False)
    for args in (["db", "upgrade"], ["list"]):
        done = run_cli(*args, "--db", url)
        assert done.returncode == 7
        line = one_line(done.stderr)
        assert "does not exist" in line and says in line
