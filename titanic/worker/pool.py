"""Many worker connections served by one loop, with requests handed over in batches.

The Titanic server uses this: several connections per TSP service let the broker hand it many
requests at once, and the batch handler turns the `titanic.request`s that arrived together into
one database transaction (group commit). With `identities` the connections ask the broker who
sends each request (titanic.protocol.identity) and handlers get each request's Caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import zmq

from titanic._zmq import SocketHook, SocketSet, Waker
from titanic.logs import quoted_name
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Dialect, Frames
from titanic.settings import broker_list
from titanic.worker.connection import ConnectionSettings, WorkerConnection

log = logging.getLogger("titanic.worker")

#: Takes the bodies of requests that arrived together and their callers (None when the broker
#: told none); returns one reply body per request.
BatchHandler = Callable[[Sequence[Frames], Sequence[Caller | None]], Sequence[Frames]]


#: A request read by the pool: its connection, the client's address, the body, the caller.
PoolRequest = tuple[WorkerConnection, bytes, Frames, Caller | None]


class WorkerPool:
    """Serves several services, each on several connections to every broker, in batches.

    `run()` is a loop of its own; the dispatcher instead shares one SocketSet between the pool
    and its client and drives the pool with `open`, `read`, `serve`, `upkeep` and `close`.
    """

    def __init__(self, broker: str | Sequence[str],
                 handlers: Mapping[bytes, tuple[int, BatchHandler | None]], *,
                 dialect: Dialect = Dialect.MDP01, settings: ConnectionSettings | None = None,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None,
                 sockets: SocketSet | None = None, identities: bool = False) -> None:
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._own_sockets = sockets is None
        self.sockets = sockets or SocketSet()
        # A service without a handler is served by whoever drives the pool (read() and reply).
        self._handlers = {service: handler for service, (_, handler) in handlers.items()
                          if handler is not None}
        # Each connection heartbeats and reconnects on its own: a dead broker costs only its own.
        self.connections = [
            WorkerConnection(self._context, endpoint, service, dialect=dialect,
                             settings=settings, configure_socket=configure_socket,
                             watch=self.sockets, identities=identities)
            for endpoint in broker_list(broker)
            for service, (count, _) in handlers.items() for _ in range(count)
        ]
        self._waker = Waker()
        self._next_upkeep = 0.0
        self.batches = 0
        self.requests_handled = 0
        #: Times one of its connections lost a broker it had heard from (DISCONNECT, or
        #: silence), to register again: the broker restarted or dropped it. Tries to reach a
        #: broker that never answered do not count.
        self.broker_losses = 0

    def stop(self) -> None:
        """Ask run() to return; safe from other threads and signal handlers."""
        self._waker.wake()

    def run(self) -> None:
        """Serve until stop(); then DISCONNECT every connection."""
        self.sockets.add_fd(self._waker.fileno())
        self.open(time.monotonic())
        try:
            while not self._waker.stopped.is_set():
                ready, _ = self.sockets.wait(max(0.0, self._next_upkeep - time.monotonic()))
                now = time.monotonic()
                self.serve(self.read(ready, now), now)
                self.upkeep(now)
        finally:
            self.close()
            self._waker.close()

    def open(self, now: float) -> None:
        """Connect every connection (READY)."""
        for connection in self.connections:
            connection.connect(now)
        self._next_upkeep = min(c.next_deadline() for c in self.connections)

    def read(self, ready: list[zmq.Socket[bytes]], now: float) -> list[PoolRequest]:
        """The requests waiting on those of `ready` that are this pool's sockets."""
        requests: list[PoolRequest] = []
        if not ready:
            return requests
        readable = set(ready)
        for connection in self.connections:
            if connection.socket is not None and connection.socket in readable:
                heard = connection.heard
                requests.extend((connection, client, body, caller)
                                for client, body, caller in connection.read(now))
                if connection.socket is None:
                    if heard:
                        self.broker_losses += 1
                    self._next_upkeep = now  # DISCONNECT: reconnect on time
        return requests

    def serve(self, requests: list[PoolRequest], now: float) -> None:
        """Hand each service its batch and send the replies."""
        batches: dict[bytes, list[PoolRequest]] = {}
        for request in requests:
            batches.setdefault(request[0].service, []).append(request)
        for service, batch in batches.items():
            handler = self._handlers.get(service)
            if handler is None:
                raise ValueError(f"no handler for {service!r}: its caller answers its requests")
            try:
                replies = handler([body for _, _, body, _ in batch],
                                  [caller for _, _, _, caller in batch])
            except Exception:
                log.exception("handler for %s failed on %d request(s); re-registering so "
                              "their clients retry", quoted_name(service), len(batch))
                for connection in {id(c): c for c, _, _, _ in batch}.values():
                    connection.reset(now)
                self._next_upkeep = now
                continue
            self.batches += 1
            self.requests_handled += len(batch)
            for (connection, client, _, _), reply in zip(batch, replies, strict=True):
                connection.reply(client, reply, now=now)

    def upkeep(self, now: float) -> float:
        """Heartbeats and reconnections when due; returns when upkeep is due next."""
        if now >= self._next_upkeep:
            # Deadlines only move later between upkeeps (a reply heard), so an early upkeep is
            # a cheap no-op and none is ever late.
            for connection in self.connections:
                heard = connection.socket is not None and connection.heard
                connection.maintain(now)
                if heard and connection.socket is None:
                    self.broker_losses += 1  # the broker fell silent
            self._next_upkeep = min(c.next_deadline() for c in self.connections)
        return self._next_upkeep

    def services_down(self, now: float) -> list[bytes]:
        """The services none of whose connections is alive (see WorkerConnection.alive)."""
        alive: dict[bytes, bool] = {}
        for connection in self.connections:
            alive[connection.service] = (alive.get(connection.service, False)
                                         or connection.alive(now))
        return [service for service, up in alive.items() if not up]

    def close(self) -> None:
        """DISCONNECT and close every connection; the context too if the pool made it."""
        for connection in self.connections:
            connection.close(disconnect=True)
        if self._own_sockets:
            self.sockets.close()
        if self._own_context:
            self._context.term()
