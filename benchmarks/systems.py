"""Each compared system behind one interface: start it, submit jobs, count what is left.

Every system runs two worker processes with a no-op job (benchmarks/peer_jobs.py) and takes
100-byte payloads. `submit_one` returns when the system says the job is stored: for titanic
and the PostgreSQL queues after the commit, for Celery after RabbitMQ's publisher confirm, for
RQ when Redis answered (Redis here keeps nothing on disk).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import psycopg

from titanic.bench import tsp
from titanic.bench.common import free_port, spawn, stop_all, titanic_command
from titanic.client import Client, PipelinedClient
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.protocol import tsp as tsp_protocol
from titanic.store import NewRequest, Store, new_request_id, open_store
from titanic.store.hot import HotStatements
from titanic.store.rows import new_row, utcnow

HERE = Path(__file__).resolve().parent
PG_SERVER = os.environ.get("PEERS_PG", "postgresql://postgres@127.0.0.1:5432")
PAYLOAD = b"x" * 100
WORKERS = 2


def _peer_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(HERE), "PYTHONUNBUFFERED": "1", **extra}


def _start(args: list[str], **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_peer_env(**env), cwd=HERE)


def _setup(args: list[str], **env: str) -> None:
    """A set-up command (schema), tried again while the server restarts."""
    for attempt in range(10):
        done = subprocess.run(args, capture_output=True, env=_peer_env(**env), cwd=HERE,
                              check=False)
        if done.returncode == 0:
            return
        if attempt == 9:
            raise RuntimeError(f"{args} failed: {done.stderr.decode(errors='replace')[-500:]}")
        time.sleep(1.0)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (so its tables have no statistics), dropped after."""
    name = f"peers_{prefix}_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        forget_poller(f"{PG_SERVER}/{name}")
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def dispatcher_on_thread(store: Store, workers: int = WORKERS) -> Iterator[str]:
    """A broker and `workers` echo workers as processes, and a dispatcher over `store` on a
    thread of this process (for tools that look inside it); yields the broker's endpoint once
    titanic.request is served, and stops them all afterwards."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    processes = [spawn(titanic_command("broker", "--bind", endpoint))]
    processes += [spawn(titanic_command("worker", "echo", "--broker", endpoint))
                  for _ in range(workers)]
    try:
        dispatcher = Dispatcher(store, DispatcherSettings(broker=endpoint))
        thread = threading.Thread(target=dispatcher.run, daemon=True)
        thread.start()
        try:
            tsp.wait_for_titanic(endpoint)
            yield endpoint
        finally:
            dispatcher.stop()
            thread.join(30)
    finally:
        stop_all(processes)


def _admin(sql: str, tries: int = 30) -> None:
    """A statement on the server's postgres database, waiting out a restart (other programs
    on this machine may restart the server)."""
    for attempt in range(tries):
        try:
            with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
                admin.execute(sql)
            return
        except psycopg.OperationalError:
            if attempt == tries - 1:
                raise
            time.sleep(1.0)


#: One connection per database for counting what is left, kept open: connecting anew for
#: every poll would cost more CPU (here and in a new server process) than what is measured.
_pollers: dict[str, psycopg.Connection[Any]] = {}


def _poller(dsn: str) -> psycopg.Connection[Any]:
    conn = _pollers.get(dsn)
    if conn is None or conn.closed:
        conn = _pollers[dsn] = psycopg.connect(dsn, autocommit=True)
    return conn


def forget_poller(dsn: str) -> None:
    conn = _pollers.pop(dsn, None)
    if conn is not None:
        conn.close()


def postgres_pids(dsn: str) -> list[int]:
    """The server processes working for this database now (not the poller's), and the WAL
    writer."""
    conn = _poller(dsn)
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE (datname = current_database()"
                        " AND pid <> pg_backend_pid()) OR backend_type = 'walwriter'").fetchall()
    return [int(pid) for (pid,) in rows]


def count(dsn: str, sql: str) -> int:
    """One count, waiting out a server restart."""
    for attempt in range(30):
        try:
            row = _poller(dsn).execute(sql).fetchone()
            return int(row[0]) if row else 0
        except psycopg.OperationalError:
            forget_poller(dsn)
            if attempt == 29:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def analyze(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ANALYZE {table}")


class System:
    """The interface compare.py drives; see the module docstring."""

    name = ""
    durability = ""
    postgres_table: str | None = None  # for ANALYZE
    dsn = ""

    def start(self) -> None:
        """Servers up, schema in place, no workers yet."""

    def start_workers(self) -> None:
        """The two worker processes."""

    def stop_workers(self) -> None:
        """Stop the workers."""

    def stop(self) -> None:
        """Stop everything started."""

    def submit_one(self) -> None:
        """Submit one job, returning once the system acknowledged it."""
        raise NotImplementedError

    def submit_concurrently(self, jobs: int, depth: int) -> None:
        """Submit `jobs` with `depth` submissions in flight at once."""
        raise NotImplementedError

    def fill(self, jobs: int, service: str = "echo") -> None:
        """Put `jobs` waiting jobs in place, workers stopped (the quickest way the API has);
        titanic's for another `service` stay waiting."""
        raise NotImplementedError

    def remaining(self) -> int:
        """Jobs not finished yet."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Processes other than this one whose CPU counts: workers, brokers, servers."""
        raise NotImplementedError

    def floor(self, samples: int) -> dict[str, float]:
        """What one acknowledgement cannot go below, measured now (p50, ms); {} if not known."""
        return {}

    def roles(self) -> dict[str, list[int]]:
        """The processes of pids() by what they do, where it is worth telling apart."""
        return {}

    def timings(self) -> dict[str, tuple[float, int]]:
        """Time spent so far inside the system, where it reports it: (seconds, count) per
        phase; {} if it does not."""
        return {}


def _shares(jobs: int, depth: int) -> list[int]:
    """`jobs` split among `depth` submitters."""
    return [jobs // depth + (1 if i < jobs % depth else 0) for i in range(depth)]


def _threaded(jobs: int, depth: int, submit: Callable[[], None]) -> None:
    """`jobs` calls of `submit` from `depth` threads."""
    def run(n: int) -> None:
        for _ in range(n):
            submit()

    with ThreadPoolExecutor(depth) as pool:
        for future in [pool.submit(run, n) for n in _shares(jobs, depth)]:
            future.result()


def _gathered(loop: asyncio.AbstractEventLoop, jobs: int, depth: int,
              submit: Callable[[], Awaitable[Any]]) -> None:
    """`jobs` awaited calls of `submit` from `depth` coroutines on `loop`."""
    async def run(n: int) -> None:
        for _ in range(n):
            await submit()

    async def everything() -> None:
        await asyncio.gather(*(run(n) for n in _shares(jobs, depth)))

    loop.run_until_complete(everything())


# -- titanic ----------------------------------------------------------------------------------


#: What the name of titanic with its dispatcher in the broker ends with.
HOSTED = ", in the broker"


class Titanic(System):
    """titanic: broker, dispatcher, two echo workers; SQLite FULL or PostgreSQL. `hosted`: the
    dispatcher runs in the broker (`titanic broker --titanic`), else in a process of its own."""

    def __init__(self, database: str, *, hosted: bool = False) -> None:
        self.database = database
        self.hosted = hosted
        self.name = (f"titanic {'SQLite FULL' if database == 'sqlite' else 'PostgreSQL'}"
                     + (HOSTED if hosted else ""))
        self.durability = ("fsync'd commit (synchronous=FULL)" if database == "sqlite"
                           else "synchronous commit")
        self.postgres_table = None if database == "sqlite" else "titanic_requests"
        self._stack = ExitStack()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._workers: list[subprocess.Popen[bytes]] = []
        self._client: Client | None = None
        self._sqlite: sqlite3.Connection | None = None
        self._metrics = ""

    def start(self) -> None:
        if self.database == "sqlite":
            folder = self._stack.enter_context(tempfile.TemporaryDirectory())
            self.url = f"sqlite:///{folder}/titanic.db"
        else:
            self.dsn = self._stack.enter_context(fresh_database("titanic"))
            self.url = self.dsn.replace("postgresql://", "postgresql+psycopg://")
        open_store(self.url).close_store()  # the schema
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        metrics = f"127.0.0.1:{free_port()}"
        self._metrics = f"http://{metrics}/metrics"
        hosting = ["--titanic", "--db", self.url, "--metrics-bind", metrics] if self.hosted else []
        self._processes = [spawn(titanic_command("broker", "--bind", self.endpoint, *hosting))]

    def start_workers(self) -> None:
        self._workers = [spawn(titanic_command("worker", "echo", "--broker", self.endpoint))
                         for _ in range(WORKERS)]
        if not self.hosted:
            self._workers.append(spawn(titanic_command(
                "dispatcher", "--broker", self.endpoint, "--db", self.url, "--metrics-bind",
                self._metrics.removeprefix("http://").removesuffix("/metrics"))))
        tsp.wait_for_titanic(self.endpoint)
        self._client = Client(self.endpoint, timeout=10, retries=0)

    def stop_workers(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        stop_all(self._workers)
        self._workers = []

    def stop(self) -> None:
        self.stop_workers()
        stop_all(self._processes)
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        self._stack.close()

    def submit_one(self) -> None:
        assert self._client is not None
        reply = self._client.request(tsp_protocol.REQUEST_SERVICE, b"echo", PAYLOAD)
        if not reply[0].startswith(b"200"):
            raise RuntimeError(f"titanic.request answered {reply[0]!r}")

    def submit_concurrently(self, jobs: int, depth: int) -> None:
        with PipelinedClient(self.endpoint, depth=depth, timeout=30, retries=0) as client:
            work = ((tsp_protocol.REQUEST_SERVICE, [b"echo", PAYLOAD]) for _ in range(jobs))
            for completion in client.run(work):
                if completion.error is not None:
                    raise completion.error

    def fill(self, jobs: int, service: str = "echo") -> None:
        store = open_store(self.url)
        try:
            for start in range(0, jobs, 1000):
                store.submit_many([NewRequest(service, (PAYLOAD,))] * min(1000, jobs - start))
        finally:
            store.close_store()

    def remaining(self) -> int:
        sql = ("SELECT count(*) FROM titanic_requests WHERE service = 'echo'"
               " AND status IN ('pending', 'dispatched')")
        if self.dsn:
            return count(self.dsn, sql)
        if self._sqlite is None:
            self._sqlite = sqlite3.connect(self.url.removeprefix("sqlite:///"))
        return int(self._sqlite.execute(sql).fetchone()[0])

    def pids(self) -> list[int]:
        pids = [p.pid for p in self._processes + self._workers]
        return pids + (postgres_pids(self.dsn) if self.dsn else [])

    def roles(self) -> dict[str, list[int]]:
        found = {"broker": [self._processes[0].pid],
                 "workers": [p.pid for p in self._workers[:WORKERS]]}
        if not self.hosted:
            found["dispatcher"] = [self._workers[WORKERS].pid]
        if self.dsn:
            found["PostgreSQL"] = postgres_pids(self.dsn)
        return found

    def timings(self) -> dict[str, tuple[float, int]]:
        """From the dispatcher's metrics: its time from reading a titanic.request to sending
        the answer, and in store exchanges (both kinds of commit)."""
        with urllib.request.urlopen(self._metrics, timeout=5) as response:
            text = response.read().decode()
        found: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.endswith(("_seconds_sum", "_seconds_count")):
                found[name] = float(value)
        return {phase: (found[f"titanic_dispatcher_{metric}_seconds_sum"],
                        int(found[f"titanic_dispatcher_{metric}_seconds_count"]))
                for phase, metric in (("read to answer", "ack"), ("store", "store"))}

    def floor(self, samples: int) -> dict[str, float]:
        """SQLite: one round trip through the broker to an echo worker, and one fsync'd commit
        of one request row (WAL, synchronous=FULL, the same table and indexes)."""
        if self.dsn:
            return {}
        assert self._client is not None
        trips = []
        for _ in range(samples):
            t0 = time.perf_counter()
            self._client.request(b"echo", PAYLOAD)
            trips.append(time.perf_counter() - t0)
        folder = self._stack.enter_context(tempfile.TemporaryDirectory())
        open_store(f"sqlite:///{folder}/floor.db").close_store()
        hot = HotStatements("sqlite")
        commits = []
        with closing(sqlite3.connect(f"{folder}/floor.db", isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            for _ in range(samples):
                row = new_row(hot.values, new_request_id(), "floor", PAYLOAD, utcnow(), None,
                              None)
                t0 = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(hot.insert_sql, row)
                conn.execute("COMMIT")
                commits.append(time.perf_counter() - t0)
        return {"broker round trip": statistics.median(trips) * 1000,
                "fsync'd commit": statistics.median(commits) * 1000}


# -- pgqueuer ---------------------------------------------------------------------------------


class Pgqueuer(System):
    """pgqueuer on asyncpg or psycopg: two `pgq run` processes at their defaults."""

    postgres_table = "pgqueuer"
    durability = "synchronous commit"

    def __init__(self, driver: str) -> None:
        self.driver = driver
        self.name = f"pgqueuer ({driver})"
        self._stack = ExitStack()
        self._workers: list[subprocess.Popen[bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._queries: Any = None
        self._close: Callable[[], Any] | None = None

    def start(self) -> None:
        self.dsn = self._stack.enter_context(fresh_database("pgq"))
        _setup([_bin("pgq"), "install"], **_libpq_env(self.dsn))
        self._loop.run_until_complete(self._connect())

    async def _connect(self) -> None:
        from pgqueuer import Queries

        if self.driver == "psycopg":
            from pgqueuer import PsycopgDriver

            connection = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            self._queries = Queries(PsycopgDriver(connection))
            self._close = connection.close
        else:
            import asyncpg  # type: ignore[import-untyped]
            from pgqueuer import AsyncpgPoolDriver

            pool = await asyncpg.create_pool(self.dsn)
            self._queries = Queries(AsyncpgPoolDriver(pool))
            self._close = pool.close

    def start_workers(self) -> None:
        env = {"PEERS_DSN": self.dsn, "PEERS_PGQ_DRIVER": self.driver}
        # pgqueuer's documented `pgq run` fails at start in 1.6.0 (its --log-level parser hands
        # a str where an enum is expected); pgqueuer.run() is the same supervisor without it.
        run = "import asyncio, pgqueuer; asyncio.run(pgqueuer.run('peer_jobs:pgqueuer_factory'))"
        self._workers = [_start([sys.executable, "-c", run], **env) for _ in range(WORKERS)]
        time.sleep(1.0)  # connected and listening (pgq says nothing on stdout when ready)

    def stop_workers(self) -> None:
        stop_all(self._workers)
        self._workers = []

    def stop(self) -> None:
        self.stop_workers()
        if self._close is not None:
            self._loop.run_until_complete(self._close())
            self._close = None
        self._stack.close()

    def submit_one(self) -> None:
        self._loop.run_until_complete(self._queries.enqueue("noop", PAYLOAD))

    def submit_concurrently(self, jobs: int, depth: int) -> None:
        _gathered(self._loop, jobs, depth, lambda: self._queries.enqueue("noop", PAYLOAD))

    def fill(self, jobs: int, service: str = "echo") -> None:
        for start in range(0, jobs, 1000):
            n = min(1000, jobs - start)
            self._loop.run_until_complete(
                self._queries.enqueue(["noop"] * n, [PAYLOAD] * n, [0] * n))

    def remaining(self) -> int:
        return count(self.dsn, "SELECT count(*) FROM pgqueuer")

    def pids(self) -> list[int]:
        return [p.pid for p in self._workers] + postgres_pids(self.dsn)


def _libpq_env(dsn: str) -> dict[str, str]:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return {"PGHOST": str(info.get("host", "127.0.0.1")), "PGPORT": str(info.get("port", 5432)),
            "PGUSER": str(info.get("user", "postgres")), "PGDATABASE": str(info["dbname"])}


# -- procrastinate ----------------------------------------------------------------------------


class Procrastinate(System):
    """procrastinate on its psycopg connector: two `procrastinate worker` processes."""

    name = "procrastinate"
    postgres_table = "procrastinate_jobs"
    durability = "synchronous commit"

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._workers: list[subprocess.Popen[bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._app: Any = None

    def start(self) -> None:
        self.dsn = self._stack.enter_context(fresh_database("proc"))
        _setup([_bin("procrastinate"), "--app", "peer_jobs.app", "schema", "--apply"],
               PEERS_DSN=self.dsn, PEERS_SYSTEM="procrastinate")
        sys.path.insert(0, str(HERE))
        import peer_jobs

        os.environ["PEERS_DSN"] = self.dsn
        self._app = peer_jobs.procrastinate_app()
        self._loop.run_until_complete(self._app.open_async())

    def start_workers(self) -> None:
        self._workers = [_start([_bin("procrastinate"), "--app", "peer_jobs.app", "worker"],
                                PEERS_DSN=self.dsn, PEERS_SYSTEM="procrastinate")
                         for _ in range(WORKERS)]
        time.sleep(1.5)

    def stop_workers(self) -> None:
        stop_all(self._workers)
        self._workers = []

    def stop(self) -> None:
        self.stop_workers()
        if self._app is not None:
            self._loop.run_until_complete(self._app.close_async())
            self._app = None
        self._stack.close()

    def _task(self) -> Any:
        return self._app.tasks["noop"]

    def submit_one(self) -> None:
        self._loop.run_until_complete(self._task().defer_async(body=PAYLOAD.decode()))

    def submit_concurrently(self, jobs: int, depth: int) -> None:
        task = self._task()
        _gathered(self._loop, jobs, depth, lambda: task.defer_async(body=PAYLOAD.decode()))

    def fill(self, jobs: int, service: str = "echo") -> None:
        task = self._task()
        for start in range(0, jobs, 1000):
            n = min(1000, jobs - start)
            self._loop.run_until_complete(
                task.batch_defer_async(*[{"body": PAYLOAD.decode()}] * n))

    def remaining(self) -> int:
        return count(self.dsn, "SELECT count(*) FROM procrastinate_jobs"
                               " WHERE status IN ('todo', 'doing')")

    def pids(self) -> list[int]:
        return [p.pid for p in self._workers] + postgres_pids(self.dsn)


# -- RQ ---------------------------------------------------------------------------------------


class Rq(System):
    """RQ on a Redis of its own that keeps nothing on disk; two SimpleWorkers (no fork)."""

    name = "RQ (Redis, RAM only)"
    durability = "in Redis's memory only (no RDB, no AOF)"

    def __init__(self) -> None:
        self._server: subprocess.Popen[bytes] | None = None
        self._workers: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        from redis import Redis
        from rq import Queue

        port = free_port()
        self._server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{port}/0"
        self.redis = Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.redis.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.queue = Queue(connection=self.redis)
        sys.path.insert(0, str(HERE))

    def start_workers(self) -> None:
        self._workers = [_start([_bin("rq"), "worker", "--url", self.url, "--worker-class",
                                 "rq.worker.SimpleWorker"]) for _ in range(WORKERS)]
        time.sleep(1.0)

    def stop_workers(self) -> None:
        stop_all(self._workers)
        self._workers = []

    def stop(self) -> None:
        self.stop_workers()
        if self._server is not None:
            stop_all([self._server])
            self._server = None

    def submit_one(self) -> None:
        import peer_jobs

        self.queue.enqueue(peer_jobs.noop, PAYLOAD.decode())

    def submit_concurrently(self, jobs: int, depth: int) -> None:
        _threaded(jobs, depth, self.submit_one)

    def fill(self, jobs: int, service: str = "echo") -> None:
        import peer_jobs
        from rq import Queue

        for start in range(0, jobs, 1000):
            n = min(1000, jobs - start)
            self.queue.enqueue_many([Queue.prepare_data(peer_jobs.noop, (PAYLOAD.decode(),))
                                     for _ in range(n)])

    def remaining(self) -> int:
        from rq.registry import StartedJobRegistry

        return int(self.queue.count) + int(StartedJobRegistry(queue=self.queue).count)

    def pids(self) -> list[int]:
        assert self._server is not None
        return [p.pid for p in self._workers] + [self._server.pid]


# -- Celery -----------------------------------------------------------------------------------


class Celery(System):
    """Celery on RabbitMQ with publisher confirms; one worker with two processes (prefork)."""

    name = "Celery + RabbitMQ (confirms)"
    durability = "RabbitMQ publisher confirm of a persistent message in a durable queue"

    def __init__(self) -> None:
        self._workers: list[subprocess.Popen[bytes]] = []
        self._started_rabbit = False
        self._poll: Any = None

    def start(self) -> None:
        self._started_rabbit = ensure_rabbitmq()
        self.queue_name = f"peers-{os.getpid()}-{int(time.time())}"
        os.environ["PEERS_QUEUE"] = self.queue_name
        sys.path.insert(0, str(HERE))
        import peer_jobs

        self.app = peer_jobs.celery_app()
        self.task = self.app.tasks["noop"]
        with self.app.connection_for_write() as conn:  # as Celery declares it
            self.app.amqp.queues[self.queue_name].bind(conn.default_channel).declare()

    def start_workers(self) -> None:
        self._workers = [_start([_bin("celery"), "-A", "peer_jobs", "worker", "--concurrency",
                                 str(WORKERS), "--loglevel", "WARNING", "-Q", self.queue_name],
                                PEERS_SYSTEM="celery", PEERS_QUEUE=self.queue_name)]
        time.sleep(3.0)

    def stop_workers(self) -> None:
        stop_all(self._workers)
        self._workers = []

    def stop(self) -> None:
        self.stop_workers()
        if self._poll is not None:
            self._poll.release()
            self._poll = None
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(self.queue_name)
        if self._started_rabbit:
            subprocess.run(["service", "rabbitmq-server", "stop"], capture_output=True, check=False)

    def submit_one(self) -> None:
        self.task.apply_async((PAYLOAD.decode(),))

    def submit_concurrently(self, jobs: int, depth: int) -> None:
        _threaded(jobs, depth, self.submit_one)

    def fill(self, jobs: int, service: str = "echo") -> None:
        import peer_jobs

        quick = peer_jobs.celery_app()  # the same app without confirms: filling is not timed
        quick.conf.broker_transport_options = {}
        task = quick.tasks["noop"]
        with quick.producer_or_acquire() as producer:
            for _ in range(jobs):
                task.apply_async((PAYLOAD.decode(),), producer=producer)

    def remaining(self) -> int:
        if self._poll is None:
            self._poll = self.app.connection_for_write()
        declared = self._poll.default_channel.queue_declare(self.queue_name, passive=True)
        return int(declared.message_count)

    def pids(self) -> list[int]:
        return _children([p.pid for p in self._workers]) + rabbitmq_pids()


def ensure_rabbitmq() -> bool:
    """RabbitMQ answering on 5672; True if it had to be started here (and so is stopped)."""
    import socket

    def answers() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", 5672)) == 0

    if answers():
        return False
    subprocess.run(["service", "rabbitmq-server", "start"], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while not answers():
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not start within 60 s")
        time.sleep(0.5)
    return True


def rabbitmq_pids() -> list[int]:
    return [pid for pid, command in _processes() if "beam.smp" in command and "rabbit" in command]


def _processes() -> Iterator[tuple[int, str]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue


def _children(pids: list[int]) -> list[int]:
    """These processes and all their descendants."""
    parents: dict[int, int] = {}
    for pid, _ in _processes():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found = set(pids)
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                changed = True
    return sorted(found)


def all_systems() -> dict[str, Callable[[], System]]:
    """Every compared system, by the name used on the command line."""
    return {
        "titanic-sqlite": lambda: Titanic("sqlite"),
        "titanic-postgres": lambda: Titanic("postgres"),
        "titanic-sqlite-hosted": lambda: Titanic("sqlite", hosted=True),
        "titanic-postgres-hosted": lambda: Titanic("postgres", hosted=True),
        "pgqueuer-asyncpg": lambda: Pgqueuer("asyncpg"),
        "pgqueuer-psycopg": lambda: Pgqueuer("psycopg"),
        "celery": Celery,
        "rq": Rq,
        "procrastinate": Procrastinate,
    }
