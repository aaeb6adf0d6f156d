"""Peers that know nothing of titanic's extensions, as the ZeroMQ guide's programs behave, for
tests: a standard 9/TSP server and a client that compares whole status frames.

`StandardTitanic` answers the three TSP services the way the guide's titanic.py does: it stores
a titanic.request body as given (its first frame is the service, whatever it holds), answers the
bare digits `200`, `300`, `400`, and forwards stored requests to services that `mmi.service`
says have workers, one at a time. `whole_frame_client` polls titanic.reply as the guide's
ticlient does: `200` is a reply, `400` and `500` end it, anything else means ask again.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from contextlib import ExitStack

import zmq
from titanic_support import running

from titanic.client import Client
from titanic.errors import TitanicTimeoutError
from titanic.protocol.mdp import Frames
from titanic.worker import Worker


class StandardTitanic:
    """A 9/TSP server without extensions, on one broker, until `stop()`."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.requests: dict[str, Frames] = {}  # as stored: [service, body...]
        self.replies: dict[str, Frames] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self, stack: ExitStack) -> StandardTitanic:
        """Serve the three services and forward requests until `stack` closes."""
        for service, handler in (("titanic.request", self._request),
                                 ("titanic.reply", self._reply),
                                 ("titanic.close", self._close)):
            worker = Worker(self.endpoint, service, handler, heartbeat_interval=0.1,
                            liveness=5, reconnect_initial=0.05)
            stack.enter_context(running(worker))
        stack.enter_context(running(self))
        return self

    def _request(self, body: Frames) -> Frames:
        request_id = uuid.uuid4().hex
        with self._lock:
            self.requests[request_id] = list(body)
        return [b"200", request_id.encode()]

    def _reply(self, body: Frames) -> Frames:
        request_id = body[0].decode(errors="replace") if body else ""
        with self._lock:
            if request_id in self.replies:
                return [b"200", *self.replies[request_id]]
            return [b"300"] if request_id in self.requests else [b"400"]

    def _close(self, body: Frames) -> Frames:
        request_id = body[0].decode(errors="replace") if body else ""
        with self._lock:
            self.requests.pop(request_id, None)
            self.replies.pop(request_id, None)
        return [b"200"]

    def run(self) -> None:
        """Forward each stored request whose service has workers, one at a time."""
        with Client(self.endpoint, timeout=1.0, retries=0) as client:
            while not self._stopped.wait(0.05):
                with self._lock:
                    waiting = [(request_id, body) for request_id, body in self.requests.items()
                               if request_id not in self.replies]
                for request_id, body in waiting:
                    try:
                        if client.request("mmi.service", body[0]) != [b"200"]:
                            continue
                        reply = client.request(body[0], *body[1:])
                    except TitanicTimeoutError:
                        continue
                    with self._lock:
                        if request_id in self.requests:
                            self.replies[request_id] = reply

    def stop(self) -> None:
        self._stopped.set()


def whole_frame_client(endpoint: str, request_id: str, *, polls: int = 100,
                       close: Callable[[], None] | None = None) -> str:
    """Poll titanic.reply for `request_id` as the guide's ticlient does (whole status frames);
    `close`, if given, runs after the first poll. How it ended: "reply", "client error",
    "server error", or "still polling" after `polls` questions."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        for poll in range(polls):
            sock.send_multipart([b"", b"MDPC01", b"titanic.reply", request_id.encode()])
            if not sock.poll(5000):
                raise AssertionError("no answer from titanic.reply")
            status = sock.recv_multipart()[3]
            if status == b"200":
                return "reply"
            if status == b"400":
                return "client error"
            if status == b"500":
                return "server error"
            if poll == 0 and close is not None:
                close()
        return "still polling"
    finally:
        sock.close(0)
        context.term()
