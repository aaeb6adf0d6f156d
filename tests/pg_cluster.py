"""Throw-away PostgreSQL clusters for fault tests: one server to restart, or a primary and a
synchronous standby made with pg_basebackup; on free ports in a temporary folder, removed
afterwards. The packaged server, which other test runs may be using, is never touched."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from titanic_support import free_port

STANDBY_NAME = "standby1"
DATABASE = "titanic"


def server_binaries() -> Path | None:
    """The folder of initdb, pg_ctl and pg_basebackup, or None if they are not installed."""
    candidates = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                               check=False)
        candidates.append(Path(found.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if all((folder / name).exists() for name in ("initdb", "pg_ctl", "pg_basebackup")):
            return folder
    return None


@dataclass
class Clusters:
    """Server binaries and the folder that holds the clusters' data, logs and sockets."""

    bindir: Path
    folder: Path

    def single_url(self, port: int, database: str = "postgres") -> str:
        """A URL of one server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"

    def run(self, *args: str, timeout: float = 120) -> None:
        """A server binary, as the postgres user when we are root (initdb refuses root)."""
        argv = [str(self.bindir / args[0]), *args[1:]]
        user = "postgres" if os.geteuid() == 0 else None
        subprocess.run(argv, check=True, timeout=timeout, capture_output=True, user=user,
                       cwd=self.folder)

    def start(self, data: Path, port: int, *extra: str) -> None:
        """Start a server on 127.0.0.1:port, its socket in our folder."""
        options = " ".join([f"-p {port}", f"-k {self.folder}", "-c listen_addresses=127.0.0.1",
                            "-c fsync=on", *extra])
        self.run("pg_ctl", "-D", str(data), "-o", options, "-l", str(data) + ".log", "-w",
                 "start")

    def initdb(self, data: Path) -> None:
        """A new cluster in `data`, trusting local connections."""
        self.run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")

    def stop_all(self, *folders: Path) -> None:
        """Stop the servers of these data folders at once, whatever state they are in."""
        for data in folders:
            if (data / "postmaster.pid").exists():
                # A server already dead (killed) fails to stop: nothing to do then.
                with contextlib.suppress(subprocess.CalledProcessError):
                    self.run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop",
                             timeout=60)

    def sql(self, port: int, statement: str,
            database: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement on a server (autocommit) and return its rows."""
        engine = create_engine(self.single_url(port, database), poolclass=NullPool,
                               isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(text(statement))
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()


@dataclass
class Server(Clusters):
    """One server of our own, to restart without disturbing anyone else's."""

    port: int

    @property
    def data(self) -> Path:
        """The server's data folder."""
        return self.folder / "data"

    def url(self, *, database: str = DATABASE) -> str:
        """The URL of the database made for titanic."""
        return self.single_url(self.port, database)

    def restart(self) -> None:
        """Stop the server (its connections cut) and start it again; returns once it is up."""
        # Not `pg_ctl restart`: without our -l the new server would keep the pipes that run()
        # reads, and run() would wait for it to end.
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.start(self.data, self.port)


@dataclass
class Pair(Clusters):
    """A primary and its synchronous standby."""

    primary_port: int
    standby_port: int

    @property
    def primary(self) -> Path:
        """The primary's data folder."""
        return self.folder / "primary"

    @property
    def standby(self) -> Path:
        """The standby's data folder."""
        return self.folder / "standby"

    def url(self, *, database: str = DATABASE) -> str:
        """A multi-host URL that finds whichever server accepts writes."""
        return (f"postgresql+psycopg://postgres@/{database}?host=127.0.0.1:{self.primary_port}"
                f"&host=127.0.0.1:{self.standby_port}&target_session_attrs=read-write")

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster (its backends notice and exit)."""
        pid = int((self.primary / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)

    def promote(self) -> None:
        """Make the standby the primary; returns once it accepts writes."""
        self.run("pg_ctl", "-D", str(self.standby), "-w", "promote")

    def stop(self) -> None:
        """Stop both servers at once, whatever state they are in."""
        self.stop_all(self.standby, self.primary)


def _wait_sync(pair: Pair, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = pair.sql(pair.primary_port,
                            "SELECT sync_state FROM pg_stat_replication "
                            f"WHERE application_name = '{STANDBY_NAME}'")
        except OperationalError:
            rows = []
        if rows == [("sync",)]:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"the standby is not a synchronous standby: {rows}")
        time.sleep(0.2)


def _folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="titanic-pg-"))
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(folder, postgres.pw_uid, postgres.pw_gid)
    return folder


@contextmanager
def single_server(bindir: Path) -> Iterator[Server]:
    """A server of our own on a free port, with a database `titanic`."""
    server = Server(bindir, _folder(), free_port())
    try:
        server.initdb(server.data)
        server.start(server.data, server.port)
        server.sql(server.port, f"CREATE DATABASE {DATABASE}")
        yield server
    finally:
        server.stop_all(server.data)
        shutil.rmtree(server.folder, ignore_errors=True)


@contextmanager
def primary_and_standby(bindir: Path) -> Iterator[Pair]:
    """A primary with a synchronous standby, each on a free port, and a database `titanic`."""
    pair = Pair(bindir, _folder(), free_port(), free_port())
    try:
        pair.initdb(pair.primary)
        with open(pair.primary / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        pair.start(pair.primary, pair.primary_port,
                   f"-c synchronous_standby_names={STANDBY_NAME}")
        pair.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(pair.primary_port), "-U",
                 "postgres", "-D", str(pair.standby), "-R", "-X", "stream",
                 "-d", f"application_name={STANDBY_NAME}")
        pair.start(pair.standby, pair.standby_port)
        _wait_sync(pair)
        pair.sql(pair.primary_port, f"CREATE DATABASE {DATABASE}")
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(pair.folder, ignore_errors=True)
