"""The Titanic API for asyncio: submit, fetch, wait and close as coroutines, on zmq.asyncio.

It behaves as TitanicClient does: the same answers and errors (TitanicTimeoutError saying which
piece is down, TitanicServiceError, ProtocolError), Lazy Pirate retries on a fresh socket, given
several brokers failover to the next broker when one does not answer in time, and an idempotency
key on every submit, so a submit resent after a lost answer is stored once. Calls may
run concurrently: each call in flight has a DEALER socket of its own (MDP replies carry no request
id, so one socket carries one request at a time), and sockets are reused between calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import cast

import zmq
import zmq.asyncio

from titanic.client import DIAGNOSE_TIMEOUT_S, Brokers
from titanic.errors import ClientClosedError, ProtocolError, TitanicTimeoutError
from titanic.protocol import mmi, tsp
from titanic.protocol.mdp import Dialect, Frames, build_client_request, parse_client_reply
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, DEFAULT_BROKER, broker_list
from titanic.tsp_client import (
    CallBudget,
    Fetched,
    ReplyState,
    check_close,
    parse_fetch,
    parse_submitted,
    request_body,
    timeout_error,
    uuid_frame,
)

SocketHook = Callable[[zmq.Socket[bytes]], None]
_Socket = zmq.asyncio.Socket


class AsyncTitanicClient:
    """Submit requests to Titanic and collect their replies, from asyncio code.

    `broker` is one endpoint, a comma-separated list or a sequence of them; the client stays
    with the broker that answered last and moves to the next after a timeout."""

    def __init__(self, broker: Brokers = DEFAULT_BROKER, *,
                 dialect: Dialect = Dialect.MDP01, timeout: float = CLIENT_TIMEOUT_S,
                 retries: int = CLIENT_RETRIES, context: zmq.asyncio.Context | None = None,
                 configure_socket: SocketHook | None = None) -> None:
        self.brokers = broker_list(broker)
        self.dialect = dialect
        self.timeout = timeout
        self.retries = retries
        self._own_context = context is None
        self._context = context or zmq.asyncio.Context()
        self._configure = configure_socket
        self._current = 0  # index of the broker new sockets connect to
        self._idle: list[tuple[int, _Socket]] = []  # sockets free for the next call
        self._sockets: set[_Socket] = set()  # every open socket, idle or in a call
        self._closed = False

    @property
    def broker(self) -> str:
        """The broker the next call goes to: the one that answered last."""
        return self.brokers[self._current]

    async def submit(self, service: str | bytes, *frames: bytes | str,
                     key: str | None = None) -> str:
        """Store a request for `service`; returns its UUID once it is durably stored.

        `str` frames are sent as UTF-8. `key` is the idempotency key, as TitanicClient.submit
        takes it: without one a random key is made, so this call's retries, to this broker or
        another, are stored once."""
        return parse_submitted(await self._call(tsp.REQUEST_SERVICE,
                                                request_body(service, frames, key)))

    async def fetch(self, request_id: str, *, within: float | None = None) -> Fetched:
        """Ask once for the reply to a request (taking at most `within` seconds, if given)."""
        return parse_fetch(await self._call(tsp.REPLY_SERVICE, [uuid_frame(request_id)],
                                            within))

    async def wait(self, request_id: str, timeout: float, *, interval: float = 0.1,
                   interval_max: float = 1.0) -> Fetched:
        """Fetch until the request is no longer pending or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            fetched = await self.fetch(request_id, within=max(0.0, deadline - time.monotonic()))
            remaining = deadline - time.monotonic()
            if fetched.state is not ReplyState.PENDING or remaining <= 0:
                return fetched
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval_max, interval * 1.5)

    async def close_request(self, request_id: str) -> None:
        """Delete a request and its reply (fine for an unknown UUID)."""
        check_close(await self._call(tsp.CLOSE_SERVICE, [uuid_frame(request_id)]))

    async def has_workers(self, service: str | bytes,
                          timeout: float = DIAGNOSE_TIMEOUT_S) -> bool | None:
        """Whether `service` has workers at the broker now; None if the broker did not say."""
        name = service.encode() if isinstance(service, str) else service
        try:
            answer = await self.request(mmi.SERVICE, [name], timeout=timeout, retries=0)
        except TitanicTimeoutError:
            return None
        return answer[:1] == [mmi.FOUND]

    async def _call(self, service: bytes, body: Frames, within: float | None = None) -> Frames:
        budget = CallBudget.of(self.timeout, self.retries, within)
        try:
            return await self.request(service, body, timeout=budget.timeout,
                                      retries=budget.retries)
        except TitanicTimeoutError as exc:
            present = await self.has_workers(service, budget.probe)
            raise timeout_error(exc, service, self.broker, present) from exc

    async def request(self, service: bytes, body: Sequence[bytes], *, timeout: float,
                      retries: int) -> Frames:
        """One MDP request: the reply body (parts joined); each timeout moves to a new socket
        on the next broker; TitanicTimeoutError when the attempts are spent."""
        for _ in range(retries + 1):
            index, sock = self._take()
            try:
                reply = await self._send_and_collect(sock, service, body, timeout)
            except BaseException as exc:  # cancelled, or closed under us: the socket is spent
                self._discard(sock)
                if self._closed and isinstance(exc, zmq.ZMQError):
                    raise ClientClosedError() from exc
                raise
            if reply is not None:
                self._idle.append((index, sock))
                return reply
            self._discard(sock)  # a late reply must not answer another call
            if self._current == index:  # not moved on by a concurrent call already
                self._current = (index + 1) % len(self.brokers)
        where = self.brokers[0] if len(self.brokers) == 1 else ", ".join(self.brokers)
        raise TitanicTimeoutError(
            f"no reply from service {service.decode(errors='replace')!r} at {where} "
            f"after {retries + 1} attempt(s) of {timeout:g} s")

    async def _send_and_collect(self, sock: _Socket, service: bytes, body: Sequence[bytes],
                                timeout: float) -> Frames | None:
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

    def _take(self) -> tuple[int, _Socket]:
        """An idle socket to the current broker, or a new one."""
        if self._closed:
            raise ClientClosedError()
        while self._idle:
            index, sock = self._idle.pop()
            if index == self._current:
                return index, sock
            self._discard(sock)  # connected to a broker we failed over from
        sock = self._context.socket(zmq.DEALER)
        self._sockets.add(sock)
        sock.linger = 0
        if self._configure is not None:
            self._configure(cast("zmq.Socket[bytes]", sock))  # options only: any socket does
        sock.connect(self.brokers[self._current])
        return self._current, sock

    def _discard(self, sock: _Socket) -> None:
        self._sockets.discard(sock)
        sock.close(linger=0)

    async def _collect(self, sock: _Socket, service: bytes, wait: float) -> Frames | None:
        """The reply's frames, all parts joined, or None if none came in time."""
        body: Frames = []
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await sock.poll(int(remaining * 1000) + 1):
                return None
            try:
                reply = parse_client_reply(self.dialect, await sock.recv_multipart())
            except ProtocolError:
                continue
            if reply.service and reply.service != service:
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
