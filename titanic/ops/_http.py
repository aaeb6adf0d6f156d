"""The stdlib WSGI server as the metrics endpoint and the dashboard use it."""

from __future__ import annotations

import socket
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from titanic.errors import BindError


class QuietHandler(WSGIRequestHandler):
    """No line on stderr per HTTP request (scrapes and page refreshes come every few seconds),
    and a client that stalls is cut off."""

    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per request; the threads do not keep the process alive."""

    daemon_threads = True


def bind_error(address: str, purpose: str, exc: OSError) -> BindError:
    """The one-line error for HOST:PORT that a server for `purpose` cannot listen on: the
    address and the system's reason ("Address already in use"), without the errno number."""
    return BindError(f"cannot bind {address} for {purpose}: {exc.strerror or exc}")


def check_bindable(host: str, port: int) -> None:
    """OSError unless a server of ours could listen on host:port now: the socket is bound as the
    stdlib's servers bind theirs (IPv4, SO_REUSEADDR), listened on, and closed again."""
    with socket.socket(WSGIServer.address_family, WSGIServer.socket_type) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
