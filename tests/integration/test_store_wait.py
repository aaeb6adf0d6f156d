"""A dispatcher started while its PostgreSQL server cannot be reached waits for it (a restart, a
failover) instead of exiting; a wrong database fails at once. The server "comes up" here as a TCP
relay to the real one, opened on a reserved port only after the store has been refused."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
from sqlalchemy.engine import make_url
from titanic_support import free_port, wait_until

from titanic.errors import StoreError
from titanic.store import SqlStore, open_store

pytestmark = pytest.mark.postgres


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@contextmanager
def relay(port: int, target: tuple[str, int]) -> Iterator[None]:
    """Accept on 127.0.0.1:`port` and copy both ways to `target` until the block ends."""
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stop = threading.Event()
    opened: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                inbound, _ = listener.accept()
            except TimeoutError:
                continue
            outbound = socket.create_connection(target, timeout=10)
            opened.extend((inbound, outbound))
            for source, sink in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for end in opened:
            end.close()


def test_a_server_that_comes_up_late_is_waited_for(postgres_url: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    real = make_url(postgres_url)
    port = free_port()
    late = real.set(port=port).render_as_string(hide_password=False)
    opened: list[SqlStore] = []
    failures: list[BaseException] = []

    def open_late() -> None:
        try:
            opened.append(open_store(late, wait=60))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    caplog.set_level(logging.WARNING, logger="titanic.store")
    opener = threading.Thread(target=open_late)
    opener.start()
    try:
        wait_until(lambda: any("trying again" in r.getMessage() for r in caplog.records),
                   timeout=30, message="the refused store tried again")
        assert not opened and not failures
        with relay(port, (real.host or "127.0.0.1", real.port or 5432)):
            opener.join(60)
            assert not opener.is_alive()
            assert failures == []
            store = opened[0]
            try:
                request_id = store.submit("svc", [b"after the wait"])
                stored = store.get(request_id)
                assert stored is not None and stored.request == (b"after the wait",)
            finally:
                store.close_store()
    finally:
        opener.join(60)


def test_a_database_that_does_not_exist_fails_without_waiting(
        postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    missing = make_url(postgres_url).set(database="titanic_no_such_database")
    caplog.set_level(logging.WARNING, logger="titanic.store")
    with pytest.raises(StoreError, match="does not exist"):
        open_store(missing.render_as_string(hide_password=False), wait=600)
    assert not any("trying again" in r.getMessage() for r in caplog.records)
