"""The Titanic API for asyncio: submit, fetch, wait and close as coroutines, on zmq.asyncio.

It holds the same conversations as TitanicClient (titanic.client.session): the same answers and
errors, retries on a fresh socket, failover to the next broker when one does not answer in
time, an idempotency key on every submit to titanic's own server. Calls may run concurrently:
each call in flight has a DEALER socket of its own (MDP replies carry no request id, so one
socket carries one request at a time), and sockets are reused between calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import zmq
import zmq.asyncio

from titanic.client.answers import (
    DIAGNOSE_TIMEOUT_S,
    Fetched,
    Unreachable,
    check_close,
    check_key,
    check_keys,
    encode_bodies,
    encode_frames,
    request_options,
    service_name,
    uuid_frame,
    worker_gone,
)
from titanic.client.connect_watch import ConnectWatch
from titanic.client.mdp import Brokers
from titanic.client.session import Ask, Conversation, Follower, Op, Pause, Survey, TspSession
from titanic.errors import BrokerRefusedError, ClientClosedError, EndpointError, ProtocolError
from titanic.protocol import tsp
from titanic.protocol.mdp import Dialect, Frames, build_client_request, parse_client_reply
from titanic.protocol.refusal import marked_routing_id, parse_refusal
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, DEFAULT_BROKER, broker_list

SocketHook = Callable[[zmq.Socket[bytes]], None]
_Socket = zmq.asyncio.Socket
T = TypeVar("T")
#: How often a call waiting for its answer reads its socket's monitor, in seconds.
_WATCH_SLICE_S = 0.05


class AsyncTitanicClient:
    """Submit requests to Titanic and collect their replies, from asyncio code.

    `broker` is one endpoint, a comma-separated list or a sequence of them; the client stays
    with the broker that answered last and moves to the next after a timeout."""

    def __init__(self, broker: Brokers = DEFAULT_BROKER, *,
                 dialect: Dialect = Dialect.MDP01, timeout: float = CLIENT_TIMEOUT_S,
                 retries: int = CLIENT_RETRIES, context: zmq.asyncio.Context | None = None,
                 configure_socket: SocketHook | None = None, held_waits: bool = True) -> None:
        self._session = TspSession(broker_list(broker), timeout=timeout, retries=retries,
                                   held_waits=held_waits)
        self.dialect = dialect
        self._own_context = context is None
        self._context = context or zmq.asyncio.Context()
        self._configure = configure_socket
        self._idle: dict[int, list[_Socket]] = {}  # per broker, sockets free for the next call
        #: Every open socket, idle or in a call, with its connection's watch and its broker.
        self._sockets: dict[_Socket, tuple[ConnectWatch, int]] = {}
        self._reached: set[int] = set()  # brokers a socket has been connected to
        self._closed = False

    @property
    def brokers(self) -> list[str]:
        """The brokers, in the order they are tried."""
        return self._session.brokers

    @property
    def broker(self) -> str:
        """The broker the next call goes to: the one that answered last."""
        return self._session.broker

    async def submit(self, service: str | bytes, *frames: bytes | str,
                     key: str | None = None, not_before: datetime | timedelta | None = None,
                     priority: int = 0) -> str:
        """Store a request for `service`; returns its UUID once it is durably stored.

        `str` frames are sent as UTF-8. `key` is the idempotency key, and `not_before` and
        `priority` what TitanicClient.submit takes: without a key one is made, so this call's
        retries, to this broker or another, are stored once."""
        options = request_options(not_before, priority)
        return await self._run(self._session.submit(service_name(service), encode_frames(frames),
                                                    check_key(key), options))

    async def cancel(self, request_id: str) -> str:
        """Cancel a request: one pending or scheduled is never sent; one in a worker's hands is
        marked cancelled, its reply discarded, and a task can see it (titanic.current()). The
        state it was in (pending, scheduled, dispatched; cancelled again; done, failed or
        expired, which stay as they are). UnknownRequestError for an unknown request (or
        another key's); UsageError from a server that cannot cancel (a standard 9/TSP one)."""
        return await self._run(self._session.cancel(uuid_frame(request_id)))

    async def is_cancelled(self, request_id: str, *, within: float | None = None) -> bool:
        """Whether a request was cancelled (False where the server cannot tell)."""
        return await self._run(self._session.is_cancelled(uuid_frame(request_id),
                                                      within or self._session.timeout))

    async def submit_many(self, service: str | bytes,
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
        return await self._run(self._session.submit_many(service_name(service), encoded,
                                                   check_keys(keys, len(encoded))))

    async def fetch(self, request_id: str, *, within: float | None = None) -> Fetched:
        """Ask once for the reply to a request (taking at most `within` seconds, if given)."""
        return await self._run(self._session.fetch(uuid_frame(request_id), within))

    async def wait(self, request_id: str, timeout: float, *, interval: float = 0.1,
                   interval_max: float = 1.0,
                   progress: Callable[[float], None] | None = None) -> Fetched:
        """Fetch until the request is no longer pending or `timeout` seconds pass."""
        return await self._run(self._session.wait(
            uuid_frame(request_id), timeout, interval=interval, interval_max=interval_max,
            progress=progress))

    async def follow(self, request_id: str, *, after: int = 0,
                     timeout: float | None = None) -> AsyncIterator[Frames]:
        """Each part of the request's reply as soon as it is stored, until it is done; as
        TitanicClient.follow, as an async iterator."""
        follower = Follower(request_id, after, timeout)
        frame = uuid_frame(request_id)
        while not follower.done:
            page = await self._run(self._session.follow(frame, follower.after, follower.hold()))
            for part in follower.take(page):
                yield part

    async def close_request(self, request_id: str) -> None:
        """Delete a request and its reply (fine for an unknown UUID)."""
        check_close(await self._run(self._session.call(tsp.CLOSE_SERVICE,
                                                       [uuid_frame(request_id)])))

    async def has_workers(self, service: str | bytes,
                          timeout: float = DIAGNOSE_TIMEOUT_S) -> bool | None:
        """Whether `service` has workers at the broker now; None if the broker did not say."""
        return await self._run(self._session.has_workers(service_name(service), timeout))

    # -- the adapter: each Op on asyncio sockets ------------------------------------------------

    async def _run(self, conversation: Conversation[T]) -> T:
        result: Any = None
        while True:
            try:
                op = conversation.send(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            result = await self._perform(op)

    async def _perform(self, op: Op) -> Any:
        if isinstance(op, Ask):
            return await self._ask(op.broker, op.service, op.body, op.timeout)
        if isinstance(op, Survey):
            return await self._survey(op)
        assert isinstance(op, Pause)
        await asyncio.sleep(op.seconds)
        return None

    async def _ask(self, index: int, service: bytes, body: Sequence[bytes], timeout: float
                   ) -> Frames | Unreachable | None:
        """One request to one broker: the reply (parts joined), None after `timeout`, or
        Unreachable as soon as the socket tells that the broker cannot answer."""
        sock = self._take(index)
        try:
            reply = await self._send_and_collect(sock, service, body, timeout)
        except BrokerRefusedError as exc:
            if not worker_gone(exc):
                self._idle.setdefault(index, []).append(sock)  # the refusal was its answer
                raise
            reply = None  # no answer: the conversation sends it again (TSP calls may)
        except BaseException as exc:  # cancelled, or closed under us: the socket is spent
            self._discard(sock)
            if self._closed and isinstance(exc, zmq.ZMQError):
                raise ClientClosedError() from exc
            raise
        if isinstance(reply, list):
            self._idle.setdefault(index, []).append(sock)
        else:
            self._discard(sock)  # a late reply must not answer another call
        return reply

    async def _survey(self, survey: Survey) -> dict[int, Frames | None]:
        """The same kind of question to several brokers at once (see Survey)."""
        tasks = {asyncio.ensure_future(self._ask(index, service, body, survey.timeout)): index
                 for index, service, body in survey.asks}
        answers: dict[int, Frames | None] = dict.fromkeys(tasks.values())
        waiting = set(tasks)
        deadline = time.monotonic() + survey.timeout
        while waiting and (remaining := deadline - time.monotonic()) > 0:
            done, waiting = await asyncio.wait(waiting, timeout=remaining,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                result = task.result() if task.exception() is None else None
                if isinstance(result, list):
                    answers[tasks[task]] = result
                    deadline = min(deadline, time.monotonic() + survey.grace)
        for task in waiting:
            task.cancel()
        if waiting:
            await asyncio.wait(waiting)
        return answers

    async def _send_and_collect(self, sock: _Socket, service: bytes, body: Sequence[bytes],
                                timeout: float) -> Frames | Unreachable | None:
        """The reply, or None if there was none within `timeout` seconds; a socket that cannot
        send (no connection to the broker, say after it refused our CURVE key) counts as no
        reply instead of waiting for ever."""
        began = time.monotonic()
        frames = build_client_request(self.dialect, service, body)
        for last_try in (False, True):
            try:
                await sock.send_multipart(frames, flags=zmq.NOBLOCK)
                break
            except zmq.Again:
                if last_try or not await sock.poll(int(timeout * 1000) + 1,
                                                    zmq.POLLOUT):  # type: ignore[call-arg]
                    return None
        return await self._collect(sock, service, timeout - (time.monotonic() - began))

    def _take(self, index: int) -> _Socket:
        """An idle socket to broker `index`, or a new one."""
        if self._closed:
            raise ClientClosedError()
        idle = self._idle.get(index)
        if idle:
            return idle.pop()
        sock = self._context.socket(zmq.DEALER)
        sock.linger = 0
        sock.setsockopt(zmq.ROUTING_ID, marked_routing_id())
        if self._configure is not None:
            self._configure(cast("zmq.Socket[bytes]", sock))  # options only: any socket does
        endpoint = self._session.brokers[index]
        self._sockets[sock] = (ConnectWatch(sock, endpoint), index)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:  # a socket left open would hang the context's term()
            self._discard(sock)
            raise EndpointError(f"cannot connect to {endpoint!r}: {exc.strerror}") from None
        return sock

    def _discard(self, sock: _Socket) -> None:
        watched = self._sockets.pop(sock, None)
        if watched is not None:
            self._unreachable(*watched)  # notes whether the broker was reached
            watched[0].close()
        sock.close(linger=0)

    def _unreachable(self, watch: ConnectWatch, index: int, final: bool = False
                     ) -> Unreachable | None:
        """Why broker `index` cannot answer, as the socket's monitor tells at once: a refused
        handshake, or nothing listening where no socket ever reached it or where another broker
        can answer instead (one reached before, with no other, is restarting: it is waited
        for, as a silent one is). `final`: the wait is
        over (see ConnectWatch.verdict)."""
        verdict = watch.verdict(final=final)
        if watch.connected:
            self._reached.add(index)
        others = len(self._session.brokers) > 1  # one of them can answer instead
        if verdict is None or (not verdict.handshake and not others and index in self._reached):
            return None
        return verdict

    async def _collect(self, sock: _Socket, service: bytes, wait: float
                       ) -> Frames | Unreachable | None:
        """The reply's frames, all parts joined, None if none came in time, or Unreachable as
        soon as the socket's monitor tells that the broker cannot answer; BrokerRefusedError if
        the broker refused the request."""
        body: Frames = []
        deadline = time.monotonic() + wait
        watched = self._sockets.get(sock)
        while True:
            remaining = deadline - time.monotonic()
            if watched is not None and (verdict := self._unreachable(
                    *watched, final=remaining <= 0)) is not None:
                return verdict
            if remaining <= 0:
                return None
            # In slices, so that the monitor is read while the broker stays silent.
            if not await sock.poll(int(min(remaining, _WATCH_SLICE_S) * 1000) + 1):
                continue
            try:
                reply = parse_client_reply(self.dialect, await sock.recv_multipart())
            except ProtocolError:
                continue
            if reply.service != service:
                if not reply.service and self.dialect is not Dialect.MAJORTOMO:
                    refusal = parse_refusal(reply.body)  # no worker replies without a name
                    raise BrokerRefusedError(refusal.code, refusal.reason,
                                             service.decode(errors="replace"))
                if reply.service:
                    continue  # a late reply to an earlier request
            body.extend(reply.body)
            if reply.final:
                return body
            deadline = time.monotonic() + wait  # each part restarts the clock

    def close(self) -> None:
        """Close every socket (and the context, if the client made it)."""
        self._closed = True
        for sock in list(self._sockets):  # calls in flight too: they end in ClientClosedError
            self._discard(sock)
        self._idle.clear()
        if self._own_context:
            self._context.term()

    async def __aenter__(self) -> AsyncTitanicClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
