"""The titanic dispatcher: serves the TSP services and forwards stored requests to their workers.

One loop, one thread. It waits on every socket at once (one SocketSet): the TSP connections of
its WorkerPool, which answer titanic.request / .reply / .close and store the titanic.requests
that arrived together in one transaction, and the sockets of its PipelinedClient, which carries
stored requests to their services through the broker with many in flight. Each turn it answers
what the TSP connections brought, stores the replies that came back, and claims and sends more
due requests, each claim with a lease. Leases make crashes safe: a request whose dispatcher
died goes back to pending when its lease runs out, and is sent again, so delivery is at least
once. A single thread means no lock or interpreter-lock contention between serving and
forwarding, which showed as half the latency of a synchronous titanic.request. Two threads
beside it, each on store connections of its own, do what reads many rows and must not hold up
acknowledgements meanwhile: titanic.manage (dashboards, bulk purges) and the periodic clean-up
(expiring undelivered requests, purging finished ones). What a turn decides (what to
acknowledge, store, claim, send and retry) is `titanic.dispatch.planner.Planner`'s; this
module owns the sockets, the loop and its timers.

Given several brokers, the TSP connections register with every one of them, and the forwarding
sockets are spread over them: a socket whose request timed out (its broker may be dead) moves to the
next broker, and the request goes back to the store to be sent again (at least once). Before it
registers, the dispatcher checks that no dispatcher on another store serves these brokers
(titanic.dispatch.store_identity). When a TSP connection loses a broker it had heard from (a
DISCONNECT, or silence: the broker restarted or dropped it), the planner forgets what mmi.service
said and restarts its windows (`Planner.broker_lost`): a restarted broker has no workers until they
register again, and what was forwarded to it before would wait there, to run twice if this
dispatcher died meanwhile.

With `identities` (CURVE), the TSP connections ask the broker who sends each request: a stored
request belongs to the key that submitted it (see titanic.dispatch.services), and
`max_stored_per_key` bounds how many unfinished requests one key may have stored.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

import zmq

from titanic import __version__
from titanic._zmq import SocketHook, SocketSet, Waker
from titanic.client.mdp import PipelinedClient
from titanic.dispatch.held_waits import WaitDesk
from titanic.dispatch.management import ManagementService, process_facts
from titanic.dispatch.peer_link import Capacity, PeerLink
from titanic.dispatch.planner import Planner, Transport
from titanic.dispatch.schedule import TurnSchedule
from titanic.dispatch.services import (
    batch_of,
    handle_cancel,
    handle_cancelled,
    handle_close,
    handle_reply,
)
from titanic.dispatch.settings import DispatcherSettings, DispatcherStats
from titanic.dispatch.store_identity import check_store_identity, store_reply
from titanic.errors import StoreError
from titanic.protocol import manage, peer, tsp
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Dialect, Frames
from titanic.settings import broker_list
from titanic.store import Store, StoreIdentity
from titanic.worker.connection import WorkerConnection
from titanic.worker.pool import PoolRequest, WorkerPool

log = logging.getLogger("titanic.dispatcher")

def _ignore(seconds: float) -> None:
    """A latency observer that keeps nothing (metrics not served)."""


class DispatcherBase:
    """What a dispatcher is wherever its loop runs (its own, or the broker's:
    titanic.dispatch.hosted): the store, the settings and counters, titanic.manage, the
    clean-up thread, describe()."""

    def __init__(self, store: Store, settings: DispatcherSettings | None = None) -> None:
        self.store = store
        self.settings = settings or DispatcherSettings()
        self.stats = DispatcherStats()
        self._running = False
        self._planner: Planner | None = None  # while serving
        #: When the dispatcher was made (seconds since the epoch), for its uptime, and an id
        #: telling it from others on the same host and process.
        self.started = time.time()
        self.instance = uuid.uuid4().hex[:12]
        #: Told each store exchange's duration and each acknowledgement's latency, in seconds
        #: (titanic.ops.metrics feeds its histograms from them).
        self.observe_store: Callable[[float], None] = _ignore
        self.observe_ack: Callable[[float], None] = _ignore
        self.management = ManagementService(store, self.describe,
                                            admin_only=self.settings.identities)
        #: The links to other sites (titanic.dispatch.peer_link); it answers titanic.peer.
        self.peers = PeerLink(store, self.settings, store_id="", capacity=self._capacity())

    def _capacity(self) -> Capacity | None:
        """Where the links learn this site's live workers (None: from the broker's mmi.broker)."""
        return None

    def _new_planner(self, transport: Transport) -> Planner:
        self._planner = Planner(self.store, transport, self.settings, self.stats,
                                # looked up at each call: metrics replace it after start
                                observe_store=lambda seconds: self.observe_store(seconds))  # noqa: PLW0108
        return self._planner

    def describe(self) -> dict[str, Any]:
        """Which dispatcher this is (version, host, pid, uptime), its counters, and per service
        its requests in flight and its window."""
        return {**process_facts(self.instance, __version__, self.started),
                "stats": asdict(self.stats),
                "forwarding": {service: {"in_flight": in_flight, "window": window}
                               for service, (in_flight, window) in self.forwarding().items()},
                "sites": self.peers.describe()}

    def forwarding(self) -> dict[str, tuple[int, int]]:
        """Per service: requests forwarded and awaiting their reply, and its window
        (titanic.dispatch.in_flight); empty before it serves. Safe to call from another thread."""
        planner = self._planner
        return {} if planner is None else planner.forwarding()

    def health(self) -> tuple[bool, str]:
        """Serving, and why not: running, the store reachable. Safe from another thread."""
        return self._store_health() or (True, "dispatcher serving")

    def _store_health(self) -> tuple[bool, str] | None:
        """Why the dispatcher does not serve, if it does not (not running, store unreachable)."""
        if not self._running:
            return False, "dispatcher not running"
        try:
            self.store.next_due_at()
        except StoreError as exc:
            return False, f"store unreachable: {exc}"
        return None

    def _start_clean_up(self, planner: Planner, stopped: threading.Event) -> threading.Thread:
        """Expire and purge at start-up and every cleanup_interval, on a thread of its own
        until `stopped`: with a large backlog, finding the requests to expire reads every
        waiting one (200,000: about 150 ms on either database), which would hold up
        acknowledgements on the loop's thread."""
        def clean_up() -> None:
            while True:
                planner.clean_up()
                if stopped.wait(self.settings.cleanup_interval):
                    return

        thread = threading.Thread(target=clean_up, name="titanic-cleanup", daemon=True)
        thread.start()
        return thread


class Dispatcher(DispatcherBase):
    """Serves TSP and forwards stored requests until stop(); see the module docstring."""

    def __init__(self, store: Store, settings: DispatcherSettings | None = None, *,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None) -> None:
        super().__init__(store, settings)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._configure = configure_socket
        self._waker = Waker()
        self._sockets = SocketSet()  # every socket of the loop: TSP connections and the client
        self._identity: StoreIdentity | None = None  # read at start-up, served as titanic.store
        self.server = self._make_server()
        #: titanic.wait requests held until their request finishes; a connection holds one at
        #: a time, as the broker expects a worker's answers in the order of its requests.
        self._waits = WaitDesk(store, self._answer_wait)
        self._held_on: dict[WorkerConnection, tuple[int, bytes]] = {}
        # titanic.manage on a thread and connection of its own: a dashboard's refresh or a
        # bulk purge scans the table, and must not hold up acknowledgements meanwhile.
        self._manage_pool = WorkerPool(
            self.settings.worker_broker or self.settings.broker,
            {manage.SERVICE: (1, self.management.handle_batch)}, dialect=self.settings.dialect,
            settings=self.settings.connection, context=self._context,
            configure_socket=self._configure, identities=self.settings.identities)

    def _make_server(self) -> WorkerPool:
        s = self.settings
        return WorkerPool(
            s.worker_broker or s.broker,
            {
                # titanic.request is served by the loop itself, in the planner's turns.
                tsp.REQUEST_SERVICE: (s.request_connections, None),
                tsp.REPLY_SERVICE: (s.reply_connections, batch_of(handle_reply, self.store)),
                tsp.CLOSE_SERVICE: (s.close_connections, batch_of(handle_close, self.store)),
                tsp.CANCEL_SERVICE: (1, batch_of(handle_cancel, self.store)),
                tsp.CANCELLED_SERVICE: (1, batch_of(handle_cancelled, self.store)),
                # titanic.wait is held by the loop itself until its request finishes.
                tsp.WAIT_SERVICE: (s.wait_connections, None),
                tsp.STORE_SERVICE: (1, self._serve_identity),
                peer.SERVICE: (1, self._serve_peer),
                peer.REPLIES_SERVICE: (s.reply_connections, self._serve_replies),
            },
            dialect=s.dialect, settings=s.connection, context=self._context,
            configure_socket=self._configure, sockets=self._sockets, identities=s.identities,
        )

    def _serve_identity(self, bodies: Sequence[Frames],
                        callers: Sequence[Caller | None]) -> list[Frames]:
        assert self._identity is not None  # read before the server registers
        return [store_reply(self._identity, self.store.max_request_bytes) for _ in bodies]

    def _serve_peer(self, bodies: Sequence[Frames],
                    callers: Sequence[Caller | None]) -> list[Frames]:
        return [self.peers.answer(body, caller)
                for body, caller in zip(bodies, callers, strict=True)]

    def _serve_replies(self, bodies: Sequence[Frames],
                       callers: Sequence[Caller | None]) -> list[Frames]:
        return [self.peers.replies(body, caller)
                for body, caller in zip(bodies, callers, strict=True)]

    def _check_store(self) -> None:
        """Read the store's identity; StoreMismatchError if another store serves the brokers."""
        s = self.settings
        self._identity = self.store.identity()
        check_store_identity(self._identity, broker_list(s.broker), dialect=s.dialect,
                             timeout=s.identity_timeout, context=self._context,
                             configure_socket=self._configure)

    def stop(self) -> None:
        """Stop taking work, finish or release what is in flight, return from run()."""
        self._waker.wake()

    def run(self) -> None:
        """Serve and forward until stop(); StoreMismatchError (before serving anything) if
        another store serves the brokers."""
        s = self.settings
        client: PipelinedClient | None = None
        managing: threading.Thread | None = None
        cleaning: threading.Thread | None = None
        try:
            self._check_store()
            streams = s.stream_replies
            dialect = Dialect.MDP02 if streams and s.dialect is Dialect.MDP01 else s.dialect
            client = PipelinedClient(s.broker, depth=s.max_in_flight, dialect=dialect,
                                     timeout=s.request_timeout, retries=0,
                                     context=self._context, configure_socket=self._configure,
                                     sockets=self._sockets, stream_parts=streams)
            planner = self._new_planner(client)
            self._sockets.add_fd(self._waker.fileno())
            self.server.open(time.monotonic())
            log.info("dispatcher serving titanic.request/reply/close/manage on %s, forwarding "
                     "through %s, store %s", ", ".join(broker_list(s.worker_broker or s.broker)),
                     ", ".join(client.brokers), self._identity)
            managing = threading.Thread(target=self._manage_pool.run, name="titanic-manage",
                                        daemon=True)
            managing.start()
            cleaning = self._start_clean_up(planner, self._waker.stopped)
            assert self._identity is not None
            self.peers.store_id = self._identity.id
            self.peers.start(local_broker=s.broker, local_configure=self._configure)
            self._running = True
            self._loop(client, planner)
            self._waits.answer_all()
            self._sockets.remove_fd(self._waker.fileno())
            self.server.close()  # no more TSP requests: the broker hands them to others
            self._drain(client, planner)
        finally:
            self._running = False
            self._waker.stopped.set()  # ends the clean-up thread's wait, if run() failed
            self.peers.stop()
            if cleaning is not None:
                cleaning.join(30.0)
            if managing is not None:
                self._manage_pool.stop()
                managing.join(10.0)
            if client is not None:
                client.close()
            self.server.close()
            self._sockets.close()
            self._waker.close()
            if self._own_context:
                self._context.term()
            log.info("dispatcher stopped: %s", self.stats)

    def health(self) -> tuple[bool, str]:
        """Serving, and why not: running, every TSP service registered with a broker that
        answers, and the store reachable. Safe to call from another thread."""
        now = time.monotonic()
        down = self.server.services_down(now) + self._manage_pool.services_down(now)
        if self._running and down:
            names = ", ".join(service.decode() for service in down)
            return False, f"no live broker connection for {names}"
        return self._store_health() or (True, "dispatcher serving")

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self, client: PipelinedClient, planner: Planner) -> None:
        """Wait for anything, then one turn: answer TSP, store replies, claim and send more."""
        schedule = TurnSchedule(planner, release_interval=self.settings.release_interval,
                                presence_interval=self.settings.presence_interval)
        losses = self.server.broker_losses
        while not self._waker.stopped.is_set():
            now = time.monotonic()
            schedule.run_due(now)
            wake = schedule.wake(now, self.server.upkeep(now), self._waits.next_wake(),
                                 client.next_deadline())
            ready, _ = self._sockets.wait(max(0.0, wake - time.monotonic()))
            now = time.monotonic()
            submits: list[PoolRequest] = []
            others: list[PoolRequest] = []
            for request in self.server.read(ready, now):
                (submits if request[0].service == tsp.REQUEST_SERVICE else others).append(request)
            if self.server.broker_losses != losses:  # a broker restarted, or dropped us
                losses = self.server.broker_losses
                planner.broker_lost(now)
            if others:
                planner.someone_waits(now)
                self.server.serve(self._take_waits(others, now), now)
            completions = client.collect(ready) + client.expire(now)
            schedule.more = planner.turn(
                [body for _, _, body, _ in submits], completions, now,
                callers=[caller for _, _, _, caller in submits],
                answer=partial(self._answer, submits, now=now),
                partials=client.take_partials())
            self._waits.settle(planner.take_finished(), now, planner.take_progressed())

    def _take_waits(self, requests: list[PoolRequest], now: float) -> list[PoolRequest]:
        """Take the titanic.wait requests (answered, or held by the WaitDesk); the others."""
        others: list[PoolRequest] = []
        for request in requests:
            connection, address, body, caller = request
            if connection.service != tsp.WAIT_SERVICE:
                others.append(request)
                continue
            earlier = self._held_on.get(connection)
            if earlier is not None:  # its answer must go first: with the request's state now
                self._waits.release([(connection, *earlier)])
            self._held_on[connection] = (connection.connects, address)
            self._waits.take((connection, connection.connects, address), body, caller, now)
        return others

    def _answer_wait(self, key: Hashable, answer: Frames) -> None:
        """A titanic.wait's answer, on the connection it came in on, unless that connection
        registered again since (the broker forgot the request then)."""
        assert isinstance(key, tuple)
        connection: WorkerConnection = key[0]
        connects: int = key[1]
        address: bytes = key[2]
        if self._held_on.get(connection) == (connects, address):
            del self._held_on[connection]
        if connection.connects == connects:
            connection.reply(address, answer)

    def _answer(self, submits: Sequence[PoolRequest], answers: Sequence[Frames], *,
                now: float) -> None:
        """Each titanic.request's answer, on the connection it came in on."""
        for (connection, address, _, _), answer in zip(submits, answers, strict=True):
            connection.reply(address, answer, now=now)
        waited = time.monotonic() - now
        for _ in submits:
            self.observe_ack(waited)

    def _drain(self, client: PipelinedClient, planner: Planner) -> None:
        """At shutdown: wait a while for replies in flight, then hand the rest back."""
        deadline = time.monotonic() + self.settings.drain_timeout
        # Replies held back (reply_linger) are stored now, and each one as it comes from here on.
        planner.turn([], [], time.monotonic(), answer=lambda _: None, claim=False)
        while client.in_flight and time.monotonic() < deadline:
            completions = client.poll(max(0.0, deadline - time.monotonic()))
            planner.turn([], completions, time.monotonic(), answer=lambda _: None, claim=False,
                         partials=client.take_partials())
        planner.release_unanswered(client.pending_tags())
