"""The Python API for Titanic: submit, fetch, wait, close, over any broker running a dispatcher.

Given several brokers, each call fails over to the next when one does not answer. Every submit
carries an idempotency key (the caller's, or a random one made for that submit), so a submit
resent after a lost acknowledgement, to the same broker or another, is stored once and answered
with the same UUID.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from titanic._zmq import SocketHook
from titanic.client import Brokers, Client
from titanic.errors import ProtocolError, TitanicServiceError
from titanic.protocol import tsp
from titanic.protocol.mdp import Dialect, Frames
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, DEFAULT_BROKER


class ReplyState(enum.Enum):
    """Where a request stands, as titanic.reply tells it."""

    DONE = "done"
    PENDING = "pending"
    UNKNOWN = "unknown"
    FAILED = "failed"
    EXPIRED = "expired"
    ERROR = "error"


@dataclass(frozen=True)
class Fetched:
    """A titanic.reply answer: the state, the reply frames when done, and the server's text."""

    state: ReplyState
    reply: Frames
    text: str = ""


def _parse_fetch(frames: Frames) -> Fetched:
    if not frames:
        raise ProtocolError("titanic.reply answered with no status frame")
    code = tsp.parse_status(frames[0])
    text = tsp.status_text(frames[0])
    if code == tsp.Status.OK:
        return Fetched(ReplyState.DONE, frames[1:], text)
    if code == tsp.Status.PENDING:
        return Fetched(ReplyState.PENDING, [], text)
    if code == tsp.Status.UNKNOWN:
        if text.startswith(tsp.FAILED_PREFIX):
            return Fetched(ReplyState.FAILED, [], text[len(tsp.FAILED_PREFIX):])
        if text.startswith(tsp.EXPIRED_PREFIX):
            return Fetched(ReplyState.EXPIRED, [], text[len(tsp.EXPIRED_PREFIX):])
        return Fetched(ReplyState.UNKNOWN, [], text)
    return Fetched(ReplyState.ERROR, [], text or f"status {code}")


class TitanicClient:
    """Submit requests to Titanic and collect their replies later."""

    def __init__(self, broker: Brokers = DEFAULT_BROKER, *, dialect: Dialect = Dialect.MDP01,
                 timeout: float = CLIENT_TIMEOUT_S, retries: int = CLIENT_RETRIES,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None) -> None:
        self._client = Client(broker, dialect=dialect, timeout=timeout, retries=retries,
                              context=context, configure_socket=configure_socket)

    @property
    def broker(self) -> str:
        """The broker the next call goes to: the one that answered last."""
        return self._client.broker

    def submit(self, service: str | bytes, *frames: bytes, key: str | None = None) -> str:
        """Store a request for `service`; returns its UUID once it is durably stored.

        `key` (1 to 255 characters) names the request for the store: a submit with a key
        already stored returns that request's UUID and stores nothing. Without one, a random
        key is made, so the retries of this call are stored once.
        """
        name = service.encode() if isinstance(service, str) else service
        body = tsp.build_request(name, frames, uuid.uuid4().hex if key is None else key)
        reply = self._client.request(tsp.REQUEST_SERVICE, *body)
        if not reply:
            raise ProtocolError("titanic.request answered with no status frame")
        code = tsp.parse_status(reply[0])
        if code != tsp.Status.OK or len(reply) < 2:
            raise TitanicServiceError(
                f"titanic.request refused the request: {reply[0].decode(errors='replace')}")
        return tsp.parse_uuid(reply[1])

    def fetch(self, request_id: str) -> Fetched:
        """Ask once for the reply to a request."""
        return _parse_fetch(self._client.request(tsp.REPLY_SERVICE, request_id.encode()))

    def wait(self, request_id: str, timeout: float, *, interval: float = 0.1,
             interval_max: float = 1.0,
             progress: Callable[[float], None] | None = None) -> Fetched:
        """Fetch until the request is no longer pending or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        while True:
            fetched = self.fetch(request_id)
            remaining = deadline - time.monotonic()
            if fetched.state is not ReplyState.PENDING or remaining <= 0:
                return fetched
            if progress is not None:
                progress(time.monotonic() - started)
            time.sleep(min(interval, remaining))
            interval = min(interval_max, interval * 1.5)

    def close_request(self, request_id: str) -> None:
        """Delete a request and its reply (fine for an unknown UUID)."""
        reply = self._client.request(tsp.CLOSE_SERVICE, request_id.encode())
        if not reply or tsp.parse_status(reply[0]) != tsp.Status.OK:
            status = reply[0].decode(errors="replace") if reply else "no status"
            raise TitanicServiceError(f"titanic.close failed: {status}")

    def close(self) -> None:
        """Close the connection to the broker."""
        self._client.close()

    def __enter__(self) -> TitanicClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
