"""Freelance (10/FLP) clients: requests straight to several servers, no broker between.

`FreelanceClient` (blocking, with a pipelined `send`/`poll`/`map`) and `AsyncFreelanceClient`
(zmq.asyncio) are two drivers of one conversation, `FreelanceSession`
(titanic.client.flp_session): it decides which server lives and where each request goes; the
drivers own one ROUTER socket connected to every server and the clock. The socket refuses a
message to a server it is not connected to (ROUTER_MANDATORY), which the session hears at once;
a server that restarts under the same endpoint takes its place again (ROUTER_HANDOVER).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any

import zmq
import zmq.asyncio

from titanic._zmq import NOBLOCK, SocketHook, new_socket, recv_frames, send_frames
from titanic.client.flp_session import Completion, FreelanceSession
from titanic.errors import ClientClosedError
from titanic.protocol.flp import Frames
from titanic.settings import (
    CLIENT_TIMEOUT_S,
    FREELANCE_ATTEMPT_TIMEOUT_S,
    FREELANCE_LIVENESS,
    FREELANCE_PING_INTERVAL_S,
    broker_list,
)

__all__ = ["AsyncFreelanceClient", "Completion", "FreelanceClient"]

Endpoints = str | Sequence[str]
#: Errors of a send the session hears as "this server cannot take it now".
_REFUSED = (errno.EHOSTUNREACH, errno.EAGAIN)


def _encode(service: str | bytes) -> bytes:
    return service.encode() if isinstance(service, str) else service


def _frames(body: Iterable[bytes | str]) -> Frames:
    return [part.encode() if isinstance(part, str) else bytes(part) for part in body]


def _result(completion: Completion) -> Frames:
    if completion.error is not None:
        raise completion.error
    assert completion.reply is not None
    return completion.reply


class _Driver:
    """What both clients share: the session, the socket's options and its traffic."""

    def __init__(self, endpoints: Endpoints, timeout: float, ping_interval: float,
                 liveness: int, attempt_timeout: float) -> None:
        self.endpoints = broker_list(endpoints)
        self.timeout = timeout
        self.session = FreelanceSession(self.endpoints, time.monotonic(),
                                        ping_interval=ping_interval, liveness=liveness,
                                        attempt_timeout=attempt_timeout)
        self.closed = False

    def prepare(self, sock: zmq.Socket[Any], configure: SocketHook | None) -> None:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if configure is not None:
            configure(sock)
        for endpoint in self.endpoints:
            sock.connect(endpoint)

    def flush(self, sock: zmq.Socket[Any]) -> None:
        """Send what the session has to send; what the socket refuses goes back to it."""
        while out := self.session.take_outbox():
            for identity, frames in out:
                try:
                    send_frames(sock, [identity, *frames], NOBLOCK)
                except zmq.ZMQError as exc:
                    if exc.errno not in _REFUSED:
                        raise
                    self.session.unreachable(identity, frames, time.monotonic())

    def read(self, sock: zmq.Socket[Any]) -> None:
        """Hand every message waiting on the socket to the session."""
        while True:
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return
            self.session.receive(frames[0], frames[1:], time.monotonic())

    def wait_ms(self, until: float | None) -> int:
        """How long the socket may be waited on now, in milliseconds."""
        now = time.monotonic()
        deadline = self.session.next_deadline()
        if until is not None:
            deadline = min(deadline, until)
        return max(0, int((deadline - now) * 1000) + 1)

    def check_open(self) -> None:
        if self.closed:
            raise ClientClosedError

    @property
    def dropped(self) -> int:
        """Messages dropped: malformed, or from a peer that is not one of the servers."""
        return self.session.dropped

    @property
    def stale_replies(self) -> int:
        """Replies that came after their request had been answered or given up."""
        return self.session.stale_replies

    @property
    def resent(self) -> int:
        """Requests sent to another server after the first did not answer."""
        return self.session.resent

    def alive(self) -> list[str]:
        """The servers taken for alive now."""
        return self.session.alive(time.monotonic())


class FreelanceClient(_Driver):
    """Requests to several freelance servers at once: any live one answers each request.

    `request()` sends one and waits for its reply; `send()` and `poll()` keep many in flight,
    and `map()` runs a stream of requests with `depth` in flight. A request no live server
    answers within `timeout` fails with FreelanceTimeoutError; a service no live server knows
    fails with ServiceRefusedError (404).
    """

    def __init__(self, endpoints: Endpoints, *, timeout: float = CLIENT_TIMEOUT_S,
                 ping_interval: float = FREELANCE_PING_INTERVAL_S,
                 liveness: int = FREELANCE_LIVENESS,
                 attempt_timeout: float = FREELANCE_ATTEMPT_TIMEOUT_S,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None) -> None:
        super().__init__(endpoints, timeout, ping_interval, liveness, attempt_timeout)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket = new_socket(self._context, zmq.ROUTER)
        self._early: list[Completion] = []  # others' completions request() came across
        try:
            self.prepare(self._socket, configure_socket)
        except BaseException:
            self.close()
            raise

    def send(self, service: str | bytes, body: Iterable[bytes | str], *,
             tag: Hashable = None, timeout: float | None = None) -> int:
        """Start a request without waiting; its sequence number (the tag defaults to it)."""
        self.check_open()
        now = time.monotonic()
        self.session.tick(now)
        sequence = self.session.request(_encode(service), _frames(body),
                                        self.timeout if timeout is None else timeout, now,
                                        tag=tag)
        self.flush(self._socket)
        return sequence

    def poll(self, timeout: float | None = None) -> list[Completion]:
        """The requests that ended, waiting up to `timeout` seconds for the first (None: until
        one ends, or at once if none is in flight). Servers are pinged while it waits, so
        `poll(t)` with nothing in flight keeps `alive()` current."""
        self.check_open()
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            done, self._early = self._early + self.session.take_completions(), []
            if done or (until is None and not self.session.in_flight):
                return done
            if until is not None and time.monotonic() >= until:
                return []
            self._step(until)

    def request(self, service: str | bytes, *body: bytes | str,
                timeout: float | None = None) -> Frames:
        """Send one request and return its reply frames; FreelanceTimeoutError when no server
        answers in time, ServiceRefusedError when none serves `service`."""
        marker = object()
        self.send(service, body, tag=marker, timeout=timeout)
        while True:
            for completion in self.poll():
                if completion.tag is marker:
                    return _result(completion)
                self._early.append(completion)

    def map(self, requests: Iterable[tuple[str | bytes, Sequence[bytes | str]]], *,
            depth: int = 32) -> Iterator[Completion]:
        """Run `requests` keeping `depth` in flight; each completion's tag is the request's
        index in `requests`, in the order they end."""
        pending = iter(enumerate(requests))
        exhausted = False
        while True:
            while not exhausted and self.session.in_flight < depth:
                item = next(pending, None)
                if item is None:
                    exhausted = True
                    break
                index, (service, body) = item
                self.send(service, body, tag=index)
            if not self.session.in_flight:
                return
            yield from self.poll()

    def _step(self, until: float | None) -> None:
        sock = self._socket
        if sock.poll(self.wait_ms(until), zmq.POLLIN):
            self.read(sock)
        self.session.tick(time.monotonic())
        self.flush(sock)

    def close(self) -> None:
        """Close the socket (and the context if the client made it); idempotent."""
        if self.closed:
            return
        self.closed = True
        self._socket.close(0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> FreelanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFreelanceClient(_Driver):
    """FreelanceClient for asyncio: `await request(...)`; calls may run concurrently, all on
    one socket driven by whichever task is running them."""

    def __init__(self, endpoints: Endpoints, *, timeout: float = CLIENT_TIMEOUT_S,
                 ping_interval: float = FREELANCE_PING_INTERVAL_S,
                 liveness: int = FREELANCE_LIVENESS,
                 attempt_timeout: float = FREELANCE_ATTEMPT_TIMEOUT_S,
                 context: zmq.asyncio.Context | None = None,
                 configure_socket: SocketHook | None = None) -> None:
        super().__init__(endpoints, timeout, ping_interval, liveness, attempt_timeout)
        self._own_context = context is None
        self._context = context or zmq.asyncio.Context()
        self._socket: zmq.asyncio.Socket = self._context.socket(zmq.ROUTER)
        self._socket.linger = 0
        self._pump: asyncio.Task[None] | None = None
        try:
            self.prepare(self._socket, configure_socket)
        except BaseException:
            self._socket.close(0)
            raise

    async def request(self, service: str | bytes, *body: bytes | str,
                      timeout: float | None = None) -> Frames:
        """Send one request and return its reply frames (errors as FreelanceClient's)."""
        self.check_open()
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        self.session.tick(now)
        sequence = self.session.request(_encode(service), _frames(body),
                                        self.timeout if timeout is None else timeout, now,
                                        tag=future)
        self.flush(self._socket)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run())
        pump = self._pump
        waited: set[asyncio.Future[Any]] = {future, pump}
        try:
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not future.done():  # cancelled, or the pump ended: a late reply is stale
                self.session.cancel(sequence)
        if future.done():
            return _result(future.result())
        error = None if pump.cancelled() else pump.exception()
        if error is not None:
            raise error  # the socket failed: every caller hears it
        raise ClientClosedError

    async def _run(self) -> None:
        """Drive the socket while requests are in flight; resolve their futures."""
        sock = self._socket
        while self.session.in_flight and not self.closed:
            if await sock.poll(self.wait_ms(None)):
                self.read(sock)
            self.session.tick(time.monotonic())
            self.flush(sock)
            for completion in self.session.take_completions():
                future = completion.tag
                if isinstance(future, asyncio.Future) and not future.done():
                    future.set_result(completion)

    async def close(self) -> None:
        """Close the socket (and the context if the client made it); idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self._socket.close(0)
        if self._own_context:
            self._context.term()

    async def __aenter__(self) -> AsyncFreelanceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
