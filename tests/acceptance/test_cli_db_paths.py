"""`--db` as people write it: a plain path (relative to the current folder, or absolute), or a
SQLite URL read as SQLAlchemy reads it; a folder is never made unasked except titanic's own."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from titanic_support import CLI, free_endpoint

#: The environment of every command here: no database from the test run's own environment.
BASE_ENV = {name: value for name, value in os.environ.items()
            if name not in ("TITANIC_DATABASE_URL", "XDG_DATA_HOME")}


def titanic(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """A titanic command run in `cwd`."""
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**BASE_ENV, "HOME": str(cwd / "home"), **(env or {})}, check=False)


def migrated(path: Path) -> bool:
    """Whether `path` is a SQLite file with titanic's tables."""
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    return "titanic_requests" in tables


@pytest.mark.parametrize(("given", "made"), [
    ("./data/x.db", "data/x.db"),             # a plain relative path: from the current folder
    ("data/x.db", "data/x.db"),
    ("sqlite:///data/x.db", "data/x.db"),     # three slashes: relative, as SQLAlchemy reads it
    ("sqlite:///x.db", "x.db"),
])
def test_relative_forms_are_relative_to_the_current_folder(tmp_path: Path, given: str,
                                                           made: str) -> None:
    (tmp_path / "data").mkdir()
    done = titanic("db", "upgrade", "--db", given, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"schema at {done.stdout.split()[2]} in {tmp_path / made}\n"
    assert migrated(tmp_path / made)
    listed = titanic("list", "--db", given, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr


@pytest.mark.parametrize(("form", "target"), [
    ("{tmp}/var/t.db", "var/t.db"),
    ("sqlite:///{tmp}/var/t.db", "var/t.db"),  # an absolute path after sqlite:///: four slashes
    ("~/t.db", "home/t.db"),                   # ~ is the home folder (HOME is tmp/home here)
])
def test_absolute_forms(tmp_path: Path, form: str, target: str) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "home").mkdir()
    given = form.format(tmp=tmp_path)
    assert given.startswith(("sqlite:////", "/", "~"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = titanic("db", "upgrade", "--db", given, cwd=elsewhere,
                   env={"HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    assert migrated(tmp_path / target)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(("given", "says"), [
    ("./data/x.db", "no folder {cwd}/data for the database x.db: make it first "
                    "(mkdir -p {cwd}/data) or give another --db"),
    ("sqlite:///data/x.db", "no folder {cwd}/data for the database x.db (sqlite:///data/x.db "
                            "is relative to the current folder; an absolute path takes four "
                            "slashes: sqlite:////PATH): make it first (mkdir -p {cwd}/data) or "
                            "give another --db"),
])
def test_a_missing_folder_is_refused_in_one_line_and_not_made(tmp_path: Path, given: str,
                                                              says: str) -> None:
    for args in (["db", "upgrade"], ["broker", "--titanic", "--bind", free_endpoint()],
                 ["dispatcher", "--broker", free_endpoint()]):
        done = titanic(*args, "--db", given, cwd=tmp_path)
        assert (done.returncode, done.stderr) == (7, f"titanic: {says.format(cwd=tmp_path)}\n")
        assert not (tmp_path / "data").exists()


def test_titanics_default_folder_is_made_and_said(tmp_path: Path) -> None:
    data_home = tmp_path / "xdg"  # does not exist yet
    env = {"XDG_DATA_HOME": str(data_home)}
    done = titanic("db", "upgrade", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    database = data_home / "titanic" / "titanic.db"
    assert migrated(database)
    assert done.stderr.count("\n") == 1
    assert f"made the folder {database.parent} for titanic's database" in done.stderr
    again = titanic("db", "upgrade", cwd=tmp_path, env=env)
    assert again.returncode == 0 and again.stderr == ""  # said once, when made


def test_reading_a_relative_url_that_is_not_there_says_how_it_was_read(tmp_path: Path) -> None:
    done = titanic("status", "0" * 32, "--db", "sqlite:///data/x.db", cwd=tmp_path)
    assert done.returncode == 7
    assert done.stderr == (f"titanic: no database at {tmp_path}/data/x.db (sqlite:///data/x.db "
                           "is relative to the current folder; an absolute path takes four "
                           "slashes: sqlite:////PATH): run `titanic db upgrade` to make it (or "
                           "give --db / TITANIC_DATABASE_URL)\n")
