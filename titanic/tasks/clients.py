"""The clients tasks and handles use when none is given: made on first use, closed at exit.

Where they connect comes from `configure()`, else from the environment: `TITANIC_BROKER` (one
endpoint or a comma-separated list; default tcp://127.0.0.1:5555), and `TITANIC_CURVE_SERVER_KEY`
with `TITANIC_CURVE_KEY` (both or neither) for CURVE, read when the first client is made.

A TitanicClient is not thread-safe (its sockets are not), so each thread gets its own; an
AsyncTitanicClient belongs to one event loop, so each loop gets its own. All of them share one
ZeroMQ context per kind (one I/O thread). A thread's client is closed once that thread has
ended, a loop's once that loop is closed (when the next client is made), and every one at exit.
After a fork the child makes clients of its own.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from titanic.errors import UsageError
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, DEFAULT_BROKER, broker_list

if TYPE_CHECKING:
    import zmq
    import zmq.asyncio

    from titanic._zmq import SocketHook
    from titanic.client.aio import AsyncTitanicClient
    from titanic.client.tsp import TitanicClient

ENV_BROKER = "TITANIC_BROKER"
ENV_CURVE_SERVER_KEY = "TITANIC_CURVE_SERVER_KEY"
ENV_CURVE_KEY = "TITANIC_CURVE_KEY"


@dataclass(frozen=True)
class ClientSettings:
    """Where the default clients connect, and how long they wait."""

    brokers: tuple[str, ...] = (DEFAULT_BROKER,)
    curve_server_key: Path | None = None
    curve_key: Path | None = None
    timeout: float = CLIENT_TIMEOUT_S
    retries: int = CLIENT_RETRIES

    def hook(self) -> SocketHook | None:
        """The socket hook speaking CURVE, or None; UsageError for one key without the other,
        CurveKeyError for a key file that is missing or malformed."""
        if self.curve_server_key is None and self.curve_key is None:
            return None
        if self.curve_server_key is None or self.curve_key is None:
            raise UsageError("CURVE takes both keys or neither: the broker's public key "
                             f"({ENV_CURVE_SERVER_KEY}, curve_server_key=) and our own key "
                             f"pair ({ENV_CURVE_KEY}, curve_key=)")
        from titanic.security import load_client_hook

        return load_client_hook(self.curve_server_key, self.curve_key)


def settings_from_environment() -> ClientSettings:
    """ClientSettings from TITANIC_BROKER and the CURVE variables (unset or empty: defaults)."""
    server_key, key = _keys_from_environment()
    return ClientSettings(brokers=_brokers_from_environment(), curve_server_key=server_key,
                          curve_key=key)


def _brokers_from_environment() -> tuple[str, ...]:
    return _brokers(os.environ.get(ENV_BROKER) or DEFAULT_BROKER)


def _keys_from_environment() -> tuple[Path | None, Path | None]:
    server_key = os.environ.get(ENV_CURVE_SERVER_KEY) or None
    key = os.environ.get(ENV_CURVE_KEY) or None
    return (Path(server_key) if server_key else None), (Path(key) if key else None)


def _brokers(value: str | Sequence[str]) -> tuple[str, ...]:
    try:
        return tuple(broker_list(value))
    except ValueError as exc:
        raise UsageError(f"broker: {exc}") from None


class _Registry:
    """The default clients of this process, by thread and by event loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.settings: ClientSettings | None = None  # None: from the environment, when needed
        self.hook: SocketHook | None = None
        self.loaded = False  # the hook is made from the settings once
        self.generation = 0
        self.sync: dict[threading.Thread, tuple[int, TitanicClient]] = {}
        self.aio: dict[asyncio.AbstractEventLoop, tuple[int, AsyncTitanicClient]] = {}
        self.context: zmq.Context[zmq.Socket[bytes]] | None = None
        self.async_context: zmq.asyncio.Context | None = None

    def _forked(self) -> None:
        """In a child after fork the parent's sockets and contexts are not ours to close."""
        if self.pid != os.getpid():
            settings = self.settings
            self._reset()
            self.settings = settings

    def configure(self, settings: ClientSettings) -> None:
        hook = settings.hook()  # a bad key is reported here, not at the first submit
        with self.lock:
            self._forked()
            self.settings, self.hook, self.loaded = settings, hook, True
            self.generation += 1  # each thread and loop makes a new client on its next use

    def _current(self) -> tuple[ClientSettings, SocketHook | None]:
        if not self.loaded:
            settings = self.settings or settings_from_environment()
            self.settings, self.hook, self.loaded = settings, settings.hook(), True
        assert self.settings is not None
        return self.settings, self.hook

    def client(self) -> TitanicClient:
        """This thread's client."""
        import zmq

        from titanic.client.tsp import TitanicClient

        thread = threading.current_thread()
        with self.lock:
            self._forked()
            made = self.sync.get(thread)
            if made is not None and made[0] == self.generation:
                return made[1]
            settings, hook = self._current()
            spent = [client for other, (_, client) in self.sync.items()
                     if other is thread or not other.is_alive()]
            self.sync = {other: entry for other, entry in self.sync.items()
                         if other is not thread and other.is_alive()}
            if self.context is None:
                self.context = zmq.Context()
            client = TitanicClient(list(settings.brokers), timeout=settings.timeout,
                                   retries=settings.retries, context=self.context,
                                   configure_socket=hook)
            self.sync[thread] = (self.generation, client)
        for old in spent:  # their threads are gone, or this thread replaces its own
            old.close()
        return client

    def async_client(self) -> AsyncTitanicClient:
        """The running event loop's client."""
        import zmq.asyncio

        from titanic.client.aio import AsyncTitanicClient

        loop = asyncio.get_running_loop()
        with self.lock:
            self._forked()
            made = self.aio.get(loop)
            if made is not None and made[0] == self.generation:
                return made[1]
            settings, hook = self._current()
            spent = [client for other, (_, client) in self.aio.items()
                     if other is loop or other.is_closed()]
            self.aio = {other: entry for other, entry in self.aio.items()
                        if other is not loop and not other.is_closed()}
            if self.async_context is None:
                self.async_context = zmq.asyncio.Context()
            client = AsyncTitanicClient(list(settings.brokers), timeout=settings.timeout,
                                        retries=settings.retries, context=self.async_context,
                                        configure_socket=hook)
            self.aio[loop] = (self.generation, client)
        for old in spent:
            old.close()
        return client

    def close(self) -> None:
        """Close every client and both contexts (at exit)."""
        with self.lock:
            if self.pid != os.getpid():
                return
            clients = [client for _, client in self.sync.values()]
            async_clients = [client for _, client in self.aio.values()]
            contexts = [self.context, self.async_context]
            self.sync, self.aio = {}, {}
            self.context = self.async_context = None
        for client in clients:
            client.close()
        for async_client in async_clients:
            async_client.close()
        for context in contexts:
            if context is not None:
                context.destroy(linger=0)  # a socket left open by a daemon thread must not hang


_registry = _Registry()
atexit.register(_registry.close)


def configure(broker: str | Sequence[str] | None = None, *,
              curve_server_key: str | Path | None = None, curve_key: str | Path | None = None,
              timeout: float = CLIENT_TIMEOUT_S, retries: int = CLIENT_RETRIES) -> None:
    """Say where tasks and handles connect when they are given no client.

    `broker` is one endpoint, a comma-separated list or a sequence of them (None: the
    TITANIC_BROKER variable, else tcp://127.0.0.1:5555). `curve_server_key` (the broker's
    public `.key` file) and `curve_key` (our own `.key_secret` file) turn CURVE on, both or
    neither (None for both: the TITANIC_CURVE_* variables). `timeout` is seconds per reply and
    `retries` the resends after a timeout, as TitanicClient takes them. The keys are loaded
    now: a missing or malformed one raises CurveKeyError here. Clients made before are replaced
    on their next use.
    """
    if timeout <= 0 or retries < 0:
        raise UsageError("timeout must be above 0 and retries 0 or more")
    if curve_server_key is None and curve_key is None:
        server_key, key = _keys_from_environment()
    else:
        server_key = Path(curve_server_key) if curve_server_key is not None else None
        key = Path(curve_key) if curve_key is not None else None
    _registry.configure(ClientSettings(
        brokers=_brokers(broker) if broker is not None else _brokers_from_environment(),
        curve_server_key=server_key, curve_key=key, timeout=timeout, retries=retries))


def default_client() -> TitanicClient:
    """This thread's TitanicClient, made on first use."""
    return _registry.client()


def default_async_client() -> AsyncTitanicClient:
    """The running event loop's AsyncTitanicClient, made on first use."""
    return _registry.async_client()


def close_default_clients() -> None:
    """Close the default clients now (they are made again when next needed)."""
    _registry.close()
