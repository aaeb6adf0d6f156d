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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zmq

from titanic._zmq import SocketHook
from titanic.client import DIAGNOSE_TIMEOUT_S, Brokers, Client, explain_timeout
from titanic.errors import ProtocolError, TitanicServiceError, TitanicTimeoutError
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

    def __str__(self) -> str:
        """The state, with the reason when there is one: `failed: ValueError: bad input`."""
        if self.text and self.text != self.state.value:
            return f"{self.state.value}: {self.text}"
        return self.state.value


def request_body(service: str | bytes, frames: Sequence[bytes | str],
                 key: str | None = None) -> Frames:
    """A keyed titanic.request body for `service` and `frames` (`str` as UTF-8); without a key a
    random one, so that resending this body after a lost answer stores it once."""
    return tsp.build_request(service.encode() if isinstance(service, str) else service,
                             [f.encode("utf-8") if isinstance(f, str) else f for f in frames],
                             uuid.uuid4().hex if key is None else key)


def uuid_frame(request_id: str) -> bytes:
    """A request UUID, given in either form and case, as the frame TSP expects."""
    return tsp.parse_uuid(request_id.encode("ascii", "replace")).encode()


def parse_submitted(reply: Frames) -> str:
    """The UUID from a titanic.request answer; TitanicServiceError if it was refused."""
    if not reply:
        raise ProtocolError("titanic.request answered with no status frame")
    code = tsp.parse_status(reply[0])
    if code != tsp.Status.OK or len(reply) < 2:
        raise TitanicServiceError(
            f"titanic.request refused the request: {reply[0].decode(errors='replace')}")
    return tsp.parse_uuid(reply[1])


def check_close(reply: Frames) -> None:
    """TitanicServiceError unless a titanic.close answer is 200."""
    if not reply or tsp.parse_status(reply[0]) != tsp.Status.OK:
        status = reply[0].decode(errors="replace") if reply else "no status"
        raise TitanicServiceError(f"titanic.close failed: {status}")


def parse_fetch(frames: Frames) -> Fetched:
    """A titanic.reply answer as a Fetched."""
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


@dataclass(frozen=True)
class CallBudget:
    """How a TSP call spends its time: attempts of `timeout` seconds, then an mmi.service
    question of `probe` seconds to explain a timeout."""

    timeout: float
    retries: int
    probe: float

    @classmethod
    def of(cls, timeout: float, retries: int, within: float | None) -> CallBudget:
        """The client's timeout and retries, cut down so that all fits in `within` seconds."""
        probe = min(DIAGNOSE_TIMEOUT_S, timeout)
        if within is None:
            return cls(timeout, retries, probe)
        probe = min(probe, within / 5)
        budget = max(0.01, within - probe)
        if (retries + 1) * timeout > budget:
            retries = max(0, int(budget / timeout) - 1)
            timeout = budget / (retries + 1)
        return cls(timeout, retries, probe)


def timeout_error(exc: TitanicTimeoutError, service: bytes, broker: str,
                  present: bool | None) -> TitanicTimeoutError:
    """The timeout of a TSP call, saying which piece is down."""
    why = explain_timeout(service, broker, present)
    if present is False:
        why += " (is titanic-dispatcher running?)"
    return TitanicTimeoutError(f"{exc}: {why}")


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

    def submit(self, service: str | bytes, *frames: bytes | str, key: str | None = None) -> str:
        """Store a request for `service`; returns its UUID once it is durably stored.

        `str` frames are sent as UTF-8. `key` (1 to 255 characters) names the request for the
        store: a submit with a key already stored returns that request's UUID and stores
        nothing. Without one, a random key is made, so the retries of this call are stored once.
        """
        return parse_submitted(self._call(tsp.REQUEST_SERVICE,
                                          request_body(service, frames, key)))

    def fetch(self, request_id: str, *, within: float | None = None) -> Fetched:
        """Ask once for the reply to a request (taking at most `within` seconds, if given)."""
        return parse_fetch(self._call(tsp.REPLY_SERVICE, [uuid_frame(request_id)], within))

    def has_workers(self, service: str | bytes) -> bool | None:
        """Whether `service` has workers at the broker now; None if the broker did not say."""
        return self._client.has_workers(service)

    def _call(self, service: bytes, body: Frames, within: float | None = None) -> Frames:
        """A request to a TSP service, in at most `within` seconds when given; a timeout says
        which piece is down: the broker, or the dispatcher (asked of the broker's MMI)."""
        budget = CallBudget.of(self._client.timeout, self._client.retries, within)
        try:
            return self._client.request(service, *body, timeout=budget.timeout,
                                        retries=budget.retries)
        except TitanicTimeoutError as exc:
            present = self._client.has_workers(service, budget.probe)
            raise timeout_error(exc, service, self._client.broker, present) from exc

    def wait(self, request_id: str, timeout: float, *, interval: float = 0.1,
             interval_max: float = 1.0,
             progress: Callable[[float], None] | None = None) -> Fetched:
        """Fetch until the request is no longer pending or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        while True:
            fetched = self.fetch(request_id, within=max(0.0, deadline - time.monotonic()))
            remaining = deadline - time.monotonic()
            if fetched.state is not ReplyState.PENDING or remaining <= 0:
                return fetched
            if progress is not None:
                progress(time.monotonic() - started)
            time.sleep(min(interval, remaining))
            interval = min(interval_max, interval * 1.5)

    def close_request(self, request_id: str) -> None:
        """Delete a request and its reply (fine for an unknown UUID)."""
        check_close(self._call(tsp.CLOSE_SERVICE, [uuid_frame(request_id)]))

    def close(self) -> None:
        """Close the connection to the broker."""
        self._client.close()

    def __enter__(self) -> TitanicClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
