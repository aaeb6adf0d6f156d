"""Helpers for the Titanic tests: processes that are always ended, threads that always stop,
and the quick settings and in-thread brokers the tests share (one definition each)."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from titanic.broker import Broker
from titanic.dispatch.settings import DispatcherSettings
from titanic.settings import BrokerSettings
from titanic.worker import Worker, echo_handler
from titanic.worker.connection import ConnectionSettings
from titanic.worker.mdp import Handler

if TYPE_CHECKING:
    from titanic.broker.server import BrokerHost
    from titanic.security import CurveServer

CLI = [sys.executable, "-P", "-m", "titanic_cli"]
#: A broker's settings for tests: quick heartbeats.
FAST_BROKER = BrokerSettings(heartbeat_interval=0.1, heartbeat_liveness=5, request_ttl=30)
#: Worker connections with quick heartbeats and reconnects, for daemons run by tests.
FAST_CONNECTION = ConnectionSettings(heartbeat_interval=0.1, liveness=5, reconnect_initial=0.05,
                                     reconnect_max=0.5)
#: A dispatcher's settings for tests: quick retries, surveys and releases, FAST_CONNECTION.
FAST_DISPATCHER = DispatcherSettings(
    backoff=0.05, backoff_max=0.2, lease_margin=0.5, presence_interval=0.05, presence_ttl=0.5,
    release_interval=0.1, drain_timeout=0.5, identity_timeout=1.0, connection=FAST_CONNECTION)


def fast_dispatcher(**changes: Any) -> DispatcherSettings:
    """FAST_DISPATCHER with `changes` (broker=..., request_timeout=..., ...) on top."""
    return replace(FAST_DISPATCHER, **changes)


def start_broker(stack: ExitStack, settings: BrokerSettings = FAST_BROKER, *,
                 curve: CurveServer | None = None, host: BrokerHost | None = None,
                 worker_endpoint: bool = False) -> Broker:
    """A broker bound to a free loopback port (and, with `worker_endpoint`, a separate worker
    endpoint: `worker_bound`), running in a thread until `stack` closes; its endpoint is
    `.bound[0]`. With `host` it runs a hosted dispatcher's turns in its loop."""
    server = Broker("tcp://127.0.0.1:0", settings, curve=curve, host=host,
                    worker_endpoints="tcp://127.0.0.1:0" if worker_endpoint else ())
    server.bind()
    stack.enter_context(running(server))
    return server


def start_worker(stack: ExitStack, broker: str | list[str], service: str,
                 handler: Handler = echo_handler, **options: Any) -> Worker:
    """A Worker with FAST_CONNECTION's heartbeats and reconnects, running in a thread until
    `stack` closes; `options` (dialect=, configure_socket=, liveness=, ...) go to Worker."""
    fast = {"heartbeat_interval": FAST_CONNECTION.heartbeat_interval,
            "liveness": FAST_CONNECTION.liveness,
            "reconnect_initial": FAST_CONNECTION.reconnect_initial,
            "reconnect_max": FAST_CONNECTION.reconnect_max}
    worker = Worker(broker, service, handler, **{**fast, **options})
    stack.enter_context(running(worker))
    return worker


#: Ports tests hand to processes they start: below Linux's ephemeral range (32768-60999 by
#: default), so the kernel never gives one of them to a socket bound to port 0 or connecting out.
TEST_PORTS = range(20000, 32000)
_PORT_LOCKS = Path(tempfile.gettempdir()) / "titanic-test-ports"
_held_ports: list[int] = []  # lock descriptors, held until this process exits


def free_port() -> int:
    """A TCP port on 127.0.0.1 reserved for this test process until it exits.

    Binding port 0 and closing the socket leaves a window in which any other process may take the
    port before ours binds it. Instead each port of TEST_PORTS has a lock file: the test process
    (or a concurrent test run) that holds the lock owns the port, and it is never given out twice.
    """
    _PORT_LOCKS.mkdir(exist_ok=True)
    start = random.randrange(len(TEST_PORTS))
    for offset in range(len(TEST_PORTS)):
        port = TEST_PORTS[(start + offset) % len(TEST_PORTS)]
        fd = os.open(_PORT_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if _bindable(port):
            _held_ports.append(fd)
            return port
        os.close(fd)  # used by something outside the tests: leave it
    raise RuntimeError(f"no free port left in {TEST_PORTS}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_endpoint() -> str:
    """tcp://127.0.0.1:<a port reserved by free_port()>."""
    return f"tcp://127.0.0.1:{free_port()}"


def replayable_seed(name: str, variable: str) -> int:
    """A random seed for a test, printed with how to replay it: `variable`'s value if it is set."""
    seed = int(os.environ.get(variable) or int.from_bytes(os.urandom(4), "big"))
    print(f"{name} seed {seed} ({variable}={seed} replays it)")
    return seed


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> None:
    """Poll `predicate` until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not met within {timeout} s")
        time.sleep(interval)


class Stoppable(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...


@contextmanager
def running(server: Stoppable, join_timeout: float = 15.0) -> Iterator[Stoppable]:
    """Run `server.run()` in a thread for the block; stop and join it afterwards."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(join_timeout)
        assert not thread.is_alive(), f"{type(server).__name__} did not stop"


class Processes:
    """Subprocesses started by a test; every one is ended when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._all: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a process; its stdout and stderr go to <log_dir>/<name>.log."""
        log = open(self._log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, cwd=cwd)
        log.close()
        self._all.append(proc)
        return proc

    def cli(self, name: str, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.Popen[bytes]:
        """Start a `titanic` sub-command."""
        return self.start(name, [*CLI, *args], env)

    def broker(self, endpoint: str, *extra: str, name: str = "broker",
               heartbeat: float = 0.2) -> subprocess.Popen[bytes]:
        """Start `titanic broker` bound to `endpoint`, with quick heartbeats and `extra`."""
        return self.cli(name, "broker", "--bind", endpoint, "--heartbeat", str(heartbeat), *extra)

    def log(self, name: str) -> str:
        """What a process wrote so far."""
        path = self._log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL and reap."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    @staticmethod
    def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
        """SIGTERM, wait for the exit status (SIGKILL if it does not come in time)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"pid {proc.pid} ignored SIGTERM for {timeout} s") from None

    def close(self) -> None:
        """End every process still running."""
        for proc in self._all:
            if proc.poll() is None:
                proc.kill()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def run_cli(*args: str, input: bytes | None = None,  # noqa: A002 - named as subprocess.run names it
            env: dict[str, str] | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    """Run a `titanic` command to completion."""
    return subprocess.run([*CLI, *args], input=input, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def recv_within(sock: zmq.Socket[bytes], timeout: float = 5.0) -> list[bytes]:
    """The next message on a socket; fails the test if none comes within `timeout` seconds."""
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"no message within {timeout} s")
    return sock.recv_multipart()


def nothing_within(sock: zmq.Socket[bytes], timeout: float = 0.3) -> bool:
    """True if no message arrives within `timeout` seconds."""
    return not sock.poll(int(timeout * 1000))


@contextmanager
def raw_dealer(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    """A bare DEALER connected to `endpoint`, for speaking the protocol by hand."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(0)
