"""The stdlib WSGI server as the metrics endpoint and the dashboard use it."""

from __future__ import annotations

from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer


class QuietHandler(WSGIRequestHandler):
    """No line on stderr per HTTP request (scrapes and page refreshes come every few seconds),
    and a client that stalls is cut off."""

    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per request; the threads do not keep the process alive."""

    daemon_threads = True
