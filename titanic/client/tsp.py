"""The Python API for Titanic: submit, fetch, wait, close, over any broker running a Titanic
server (titanic's own, or a standard 9/TSP one).

Given several brokers, each call fails over to the next when one does not answer. A submit to
titanic's own server carries an idempotency key (the caller's, or a random one made for that
submit), so a submit resent after a lost acknowledgement, to the same broker or another, is
stored once and answered with the same UUID. The conversations are titanic.client.session's; this
module sends and waits for them on blocking sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import zmq

from titanic._zmq import SocketHook
from titanic.client.answers import (
    DIAGNOSE_TIMEOUT_S,
    CallBudget,
    Fetched,
    ReplyState,
    Unreachable,
    check_close,
    check_key,
    check_keys,
    encode_bodies,
    encode_frames,
    parse_fetch,
    parse_submitted,
    request_options,
    service_name,
    uuid_frame,
    worker_gone,
)
from titanic.client.mdp import Brokers, Connection, collect_parts
from titanic.client.session import (
    Ask,
    Conversation,
    Follower,
    Op,
    Pause,
    Survey,
    TspSession,
    timeout_error,
)
from titanic.errors import BrokerRefusedError, ClientClosedError, TitanicServiceError
from titanic.protocol import tsp
from titanic.protocol.mdp import Dialect, Frames
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, DEFAULT_BROKER, broker_list

__all__ = ["CallBudget", "Fetched", "ReplyState", "TitanicClient", "TitanicServiceError",
           "check_close", "parse_fetch", "parse_submitted", "timeout_error", "uuid_frame"]

T = TypeVar("T")


class TitanicClient:
    """Submit requests to Titanic and collect their replies later."""

    def __init__(self, broker: Brokers = DEFAULT_BROKER, *, dialect: Dialect = Dialect.MDP01,
                 timeout: float = CLIENT_TIMEOUT_S, retries: int = CLIENT_RETRIES,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None, held_waits: bool = True) -> None:
        self._session = TspSession(broker_list(broker), timeout=timeout, retries=retries,
                                   held_waits=held_waits)
        self._dialect = dialect
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._configure = configure_socket
        #: One socket per broker, opened when first needed, replaced after a timeout.
        self._connections: dict[int, Connection] = {}
        self._closed = False

    @property
    def broker(self) -> str:
        """The broker the next call goes to: the one that answered last."""
        return self._session.broker

    def submit(self, service: str | bytes, *frames: bytes | str, key: str | None = None,
               not_before: datetime | timedelta | None = None, priority: int = 0) -> str:
        """Store a request for `service`; returns its UUID once it is durably stored.

        `str` frames are sent as UTF-8. `key` (1 to 255 characters) names the request for the
        store: a submit with a key already stored returns that request's UUID and stores
        nothing. Without one, a random key is made, so the retries of this call are stored once
        (by titanic's server; a standard 9/TSP server takes no key, see docs/concepts.md).
        The request is sent to its service no earlier than `not_before` (an aware datetime, or
        a timedelta from now; it is `scheduled` until then), and before the requests of that
        service with a lower `priority` (higher first, default 0). Both need titanic's own
        server: UsageError, before anything is sent, from a standard 9/TSP server.
        """
        options = request_options(not_before, priority)
        return self._run(self._session.submit(service_name(service), encode_frames(frames),
                                              check_key(key), options))

    def cancel(self, request_id: str) -> str:
        """Cancel a request: one pending or scheduled is never sent; one in a worker's hands is
        marked cancelled, its reply discarded, and a task can see it (titanic.current()). The
        state it was in (pending, scheduled, dispatched; cancelled again; done, failed or
        expired, which stay as they are). UnknownRequestError for an unknown request (or
        another key's); UsageError from a server that cannot cancel (a standard 9/TSP one)."""
        return self._run(self._session.cancel(uuid_frame(request_id)))

    def is_cancelled(self, request_id: str, *, within: float | None = None) -> bool:
        """Whether a request was cancelled (False where the server cannot tell)."""
        return self._run(self._session.is_cancelled(uuid_frame(request_id),
                                                      within or self._session.timeout))

    def submit_many(self, service: str | bytes,
                    bodies: Iterable[bytes | str | Sequence[bytes | str]],
                    keys: Sequence[str | None] | None = None) -> list[str]:
        """Store many requests for `service`; returns their UUIDs in order, once all are stored.

        Each body is one frame (`bytes`, or `str` sent as UTF-8) or a sequence of frames;
        `keys`, if given, holds one idempotency key per body (None for a random one), as
        submit takes them. Titanic's server stores them in messages of many requests, each
        message in one transaction, whole or not at all; a standard 9/TSP server is sent them
        one by one. On an error, the requests of the messages already answered are stored.
        """
        encoded = encode_bodies(bodies)
        return self._run(self._session.submit_many(service_name(service), encoded,
                                                   check_keys(keys, len(encoded))))

    def fetch(self, request_id: str, *, within: float | None = None) -> Fetched:
        """Ask once for the reply to a request (taking at most `within` seconds, if given)."""
        return self._run(self._session.fetch(uuid_frame(request_id), within))

    def wait(self, request_id: str, timeout: float, *, interval: float = 0.1,
             interval_max: float = 1.0,
             progress: Callable[[float], None] | None = None) -> Fetched:
        """Fetch until the request is no longer pending or `timeout` seconds pass."""
        return self._run(self._session.wait(uuid_frame(request_id), timeout, interval=interval,
                                            interval_max=interval_max, progress=progress))

    def follow(self, request_id: str, *, after: int = 0,
               timeout: float | None = None) -> Iterator[Frames]:
        """Each part of the request's reply (its frames) as soon as it is stored, until the
        request is done; from part `after` + 1 on.

        A worker that streams its reply (an 18/MDP worker sending PARTIALs, a handler that is a
        generator) gives several parts; any other reply is one part, once done. A question
        lost to a reconnect or a broker restart is asked again from the last part seen: no
        part comes twice or is skipped. UnknownRequestError or TitanicServiceError when the
        request is unknown, failed or expired; TitanicTimeoutError after `timeout` seconds
        (None: no limit).
        """
        follower = Follower(request_id, after, timeout)
        frame = uuid_frame(request_id)
        while not follower.done:
            page = self._run(self._session.follow(frame, follower.after, follower.hold()))
            yield from follower.take(page)

    def close_request(self, request_id: str) -> None:
        """Delete a request and its reply (fine for an unknown UUID)."""
        check_close(self._run(self._session.call(tsp.CLOSE_SERVICE, [uuid_frame(request_id)])))

    def has_workers(self, service: str | bytes) -> bool | None:
        """Whether `service` has workers at the broker now; None if the broker did not say."""
        return self._run(self._session.has_workers(service_name(service),
                                                   DIAGNOSE_TIMEOUT_S))

    # -- the adapter: each Op on blocking sockets -----------------------------------------------

    def _run(self, conversation: Conversation[T]) -> T:
        if self._closed:
            raise ClientClosedError()
        result: Any = None
        while True:
            try:
                op = conversation.send(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            result = self._perform(op)

    def _perform(self, op: Op) -> Any:
        if isinstance(op, Ask):
            return self._ask(op.broker, op.service, op.body, op.timeout)
        if isinstance(op, Survey):
            return self._survey(op)
        assert isinstance(op, Pause)
        time.sleep(op.seconds)
        return None

    def _connection(self, index: int) -> Connection:
        connection = self._connections.get(index)
        if connection is None:
            connection = self._connections[index] = Connection(
                [self._session.brokers[index]], self._dialect, self._context, self._configure,
                watch=True, others=len(self._session.brokers) > 1)
        return connection

    def _ask(self, index: int, service: bytes, body: Frames, timeout: float
             ) -> Frames | Unreachable | None:
        """One request to one broker: the reply (parts joined), None after `timeout`, or
        Unreachable as soon as the socket tells that the broker cannot answer."""
        connection = self._connection(index)
        began = time.monotonic()
        parts: list[Frames] | Unreachable | None = None
        if connection.send(service, body, timeout):
            try:
                parts = collect_parts(connection, service, timeout - (time.monotonic() - began))
            except BrokerRefusedError as exc:
                if not worker_gone(exc):
                    raise
                return None  # no answer: the conversation sends it again (TSP calls may)
            if isinstance(parts, list):
                return [frame for part in parts for frame in part]
        connection.reopen()  # a late answer must not meet the next question
        return parts if isinstance(parts, Unreachable) else None

    def _survey(self, survey: Survey) -> dict[int, Frames | None]:
        """The same kind of question to several brokers at once (see Survey)."""
        answers: dict[int, Frames | None] = {index: None for index, _, _ in survey.asks}
        waiting: dict[zmq.Socket[bytes], tuple[int, bytes, Connection, Frames]] = {}
        poller = zmq.Poller()
        for index, service, body in survey.asks:
            connection = self._connection(index)
            if connection.send(service, body):
                waiting[connection.socket] = (index, service, connection, [])
                poller.register(connection.socket, zmq.POLLIN)
                if connection.watch is not None:
                    poller.register(connection.watch.monitor, zmq.POLLIN)
        unanswered = [connection for _, _, connection, _ in waiting.values()]
        deadline = time.monotonic() + survey.timeout
        while waiting and (remaining := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(int(remaining * 1000) + 1))
            for sock, (index, service, connection, parts) in list(waiting.items()):
                if connection.unreachable() is not None:
                    del waiting[sock]  # unreachable: no answer will come
                    continue
                result = connection.read_part(service) if sock in ready else None
                if result is None or isinstance(result, BrokerRefusedError):
                    continue
                parts.extend(result[1])
                if result[0]:
                    answers[index] = parts
                    unanswered.remove(connection)
                    del waiting[sock]
                    deadline = min(deadline, time.monotonic() + survey.grace)
        for connection in unanswered:
            connection.reopen()  # a late answer must not meet the next question
        return answers

    def close(self) -> None:
        """Close the connections to the brokers."""
        if self._closed:
            return
        self._closed = True
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> TitanicClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
