"""The links of a site to its peers, on a thread of its own beside either dispatcher.

Once a second it asks each peer's brokers titanic.peer, telling this site's state and hearing
theirs (titanic.protocol.peer), and learns which services have live workers here (the hosted
dispatcher reads its broker's table; the standalone one asks mmi.broker). Then, every
`peer_turn` seconds, it claims the due requests of a service that has no live worker here (or
whose requests here have waited past `peer_overflow_after` despite its workers) and that an up
peer serves, with a lease of `peer_lease`, and sends them there as keyed titanic.requests whose
key is our UUID: a request sent again (its acknowledgement lost with the link, or this process
restarted) is stored once there. The requests claimed together go in titanic.request's batch
form (titanic.batch: each keeps its own key, all stored in one transaction there); a peer
answers titanic.peer only from a titanic that takes that form, and a batch it refuses (400) is
sent again one request a message, so that only the request at fault fails. The replies of
acknowledged ones are asked for in batches (titanic.replies, one call for many,
titanic.dispatch.peers says when) and stored here together in one transaction; then the far
copy is closed: its UUID goes with the next titanic.peer ask to that site, which closes the
copies named there on its links' thread.

While a link is down nothing goes to that peer and requests wait in our store. A forward
whose peer stays down past its lease is taken back by the store's lease release, and may then
go to another peer or to workers here: at least once, as within a site. Its own sockets and
store connections keep it off the dispatcher's loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import zmq

from titanic._zmq import SocketHook, SocketSet, Waker
from titanic.client.mdp import Completion, PipelinedClient
from titanic.dispatch.peers import PeerBook
from titanic.dispatch.services import handle_reply
from titanic.dispatch.settings import DispatcherSettings
from titanic.errors import ProtocolError, StoreError
from titanic.protocol import mmi, peer, tsp
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Frames
from titanic.settings import broker_list
from titanic.store import RequestStatus, Store

log = logging.getLogger("titanic.peers")

#: Live workers and queued requests per service at this site (None: not known yet).
Capacity = Callable[[], dict[str, tuple[int, int]] | None]
#: The most requests claimed for one peer in one turn.
_CLAIM_BATCH = 64
#: The most bytes of request bodies in one batch sent to a peer (a request over it goes alone).
_BATCH_BYTES = 1 << 20
#: The most UUIDs one titanic.peer ask asks to close.
_CLOSES_PER_ASK = 10_000


def _own_services(counts: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The counts without titanic's and the broker's own services."""
    return {name: value for name, value in counts.items()
            if not name.startswith(("titanic.", "mmi."))}


class PeerLink:
    """This site's links to its peers; see the module docstring. `answer` serves
    titanic.peer and `describe` reports, from any thread."""

    def __init__(self, store: Store, settings: DispatcherSettings, *, store_id: str,
                 capacity: Capacity | None = None,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None) -> None:
        self.store = store
        self.settings = settings
        self.site = settings.site
        self.store_id = store_id
        self.book = PeerBook(settings.peers, window=settings.peer_max_in_flight)
        self._capacity = capacity
        self._facts: dict[str, tuple[int, int]] | None = None  # from mmi.broker, standalone
        self._lock = threading.Lock()
        self._context = context
        self._configure = configure_socket
        self._waker = Waker()
        self._thread: threading.Thread | None = None
        self._clients: dict[str, PipelinedClient] = {}
        self._local: PipelinedClient | None = None
        #: Per peer, the far UUIDs to close with the next ask (their replies are stored here).
        self._closes: dict[str, list[str]] = {name: [] for name, _ in settings.peers}
        #: UUIDs of ours that asking sites have stored the replies of, closed on the thread, and
        #: the owners whose requests the asker may close (None: any, as titanic.close allows).
        self._closing: list[tuple[list[str], tuple[str | None, ...] | None]] = []
        #: Requests whose replies are stored: their forwards are forgotten once an ask interval
        #: (one transaction a second, not one a batch of replies; a forward left over is only
        #: a row that forwards_of() drops).
        self._settled: list[str] = []
        self.errors = 0
        self._more = False  # the last claim took all it could: more may be due

    # -- from any thread ------------------------------------------------------------------------

    def state(self) -> peer.SiteState:
        """This site's state as its peers hear it."""
        counts = self._capacity() if self._capacity is not None else self._facts
        return peer.SiteState(self.site, self.store_id, _own_services(counts or {}))

    def answer(self, body: Frames, caller: Caller | None = None) -> Frames:
        """titanic.peer's answer: this site's state, after hearing the asker's. The requests
        it names are closed as titanic.close would for `caller` (with CURVE, only its own)."""
        try:
            asker, closes = peer.parse_ask(body)
        except ProtocolError as exc:
            return tsp.Status.UNKNOWN.answer(f"bad request: {exc}")
        owners = None if caller is None or caller.admin else (None, caller.key)
        with self._lock:
            self.book.heard_from(asker, time.monotonic())
            if closes:
                self._closing.append((closes, owners))
        return peer.build_answer(self.state())

    def describe(self, waiting: dict[str, int] | None = None) -> dict[str, Any]:
        """This site's name and each peer's link, services and traffic; with the requests
        pending in the store for each peer's services (`waiting` by service, else counted)."""
        if waiting is None and self.book.peers:
            waiting = {}
            try:
                for (service, status), count in self.store.stats().counts.items():
                    if status is RequestStatus.PENDING:
                        waiting[service] = waiting.get(service, 0) + count
            except StoreError:
                pass
        with self._lock:
            peers = self.book.describe(time.monotonic(), waiting)
            heard = sorted(self.book.heard)
        return {"site": self.site, "peers": peers, "asked_by": heard}

    # -- the thread -----------------------------------------------------------------------------

    def start(self, local_broker: str | Sequence[str] | None = None,
              local_configure: SocketHook | None = None) -> None:
        """Start the thread; without a capacity source it asks `local_broker` mmi.broker (its
        sockets set up by `local_configure`: CURVE to our own broker)."""
        context = self._context or zmq.Context.instance()
        sockets = SocketSet()
        for name, endpoint in self.settings.peers:
            self._clients[name] = PipelinedClient(
                endpoint, depth=self.settings.peer_sockets,
                timeout=self.settings.peer_timeout, retries=0, context=context,
                configure_socket=self._configure, sockets=sockets)
        if self._capacity is None and local_broker is not None:
            self._local = PipelinedClient(broker_list(local_broker), depth=1,
                                          timeout=self.settings.peer_timeout, retries=0,
                                          context=context, configure_socket=local_configure,
                                          sockets=sockets)
        sockets.add_fd(self._waker.fileno())
        self._thread = threading.Thread(target=self._run, args=(sockets,), name="titanic-peers",
                                        daemon=True)
        self._thread.start()
        if self.book.peers:
            log.info("site %s joined to %s", self.site, ", ".join(
                f"{name}={endpoint}" for name, endpoint in self.settings.peers))

    def stop(self) -> None:
        """End the thread; forwards still unacknowledged go back to the store."""
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(10.0)
        else:
            self._waker.close()  # never started: the thread did not close it

    def _run(self, sockets: SocketSet) -> None:
        next_ask = next_claim = 0.0
        self._guarded(self._adopt, time.monotonic())
        try:
            while not self._waker.stopped.is_set():
                now = time.monotonic()
                if now >= next_ask:
                    next_ask = now + self.settings.peer_interval
                    self._guarded(self._ask, now)
                    self._guarded(self._forget_settled)
                if now >= next_claim:
                    self._more = False
                    self._guarded(self._claim, now)
                    # A full batch claimed: more may be due, claimed after this wait's replies.
                    next_claim = (now if self._more else now + self.settings.peer_turn
                                  if self._clients else next_ask)
                self._guarded(self._send_polls, now)
                if self._closing:
                    self._guarded(self._close_asked)
                wake = min(next_ask, next_claim, *self._deadlines(), self._next_poll())
                ready, _ = sockets.wait(max(0.0, wake - time.monotonic()))
                now = time.monotonic()
                done: list[Completion] = []
                for client in self._all_clients():
                    done += client.collect(ready) + client.expire(now)
                if done:
                    self._guarded(self._settle, now, done)
        finally:
            self._guarded(self._forget_settled)
            self._hand_back()
            for client in self._all_clients():
                client.close()
            sockets.close()
            self._waker.close()

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """A step that a store error or a bug must not end the thread with."""
        try:
            step(*args)
        except StoreError as exc:
            self.errors += 1
            log.warning("peers: store error: %s", exc)
            self._waker.stopped.wait(0.2)
        except Exception:
            self.errors += 1
            log.exception("peers: unexpected error")
            self._waker.stopped.wait(0.2)

    def _all_clients(self) -> list[PipelinedClient]:
        return [*self._clients.values(), *([self._local] if self._local is not None else [])]

    def _deadlines(self) -> list[float]:
        return [deadline for client in self._all_clients()
                if (deadline := client.next_deadline()) is not None]

    def _next_poll(self) -> float:
        with self._lock:
            when = self.book.next_poll()
        return time.monotonic() + 1.0 if when is None else when

    def _adopt(self, now: float) -> None:
        """The requests this store had sent to each peer and not yet seen answered (this
        dispatcher, or one before it on the store, stopped): their replies are asked for at
        once, without waiting for their leases."""
        for name in self._clients:
            found = self.store.forwards_of(name)
            with self._lock:
                for request_id, far_id in found:
                    self.book.adopt(request_id, name, far_id, now, self.settings.peer_lease)
            if found:
                log.info("peer %s: %d requests sent there before, their replies asked for",
                         name, len(found))

    def _hand_back(self) -> None:
        """At the end: requests claimed but not acknowledged go back to pending at once."""
        with self._lock:
            unsent = [request_id for request_id, forward in self.book.forwards.items()
                      if forward.far_id is None]
        for request_id in unsent:
            try:
                self.store.release(request_id)
            except StoreError:
                break  # their leases run out instead

    # -- asking ---------------------------------------------------------------------------------

    def _ask(self, now: float) -> None:
        """Ask each peer not asked already titanic.peer, telling our state; ask our broker
        mmi.broker when that is how we learn our capacity."""
        state = self.state()
        for name, client in self._clients.items():
            with self._lock:
                link = self.book.peers[name]
                if link.asking or not client.free_slots:
                    continue
                link.asking = True
                closes, self._closes[name] = self._closes[name][:_CLOSES_PER_ASK], \
                    self._closes[name][_CLOSES_PER_ASK:]
            client.send(peer.SERVICE, peer.build_ask(state, closes), ("ask", name, tuple(closes)),
                        timeout=self.settings.peer_interval)
        if self._local is not None and self._local.free_slots:
            self._local.send(mmi.BROKER, [], ("facts",))
        with self._lock:
            lapsed = self.book.lapsed(now)
        if lapsed:
            log.info("peers: %d forwards to down peers passed their lease", len(lapsed))

    # -- claiming and sending -------------------------------------------------------------------

    def _claim(self, now: float) -> None:
        """Claim due requests that go to a peer, and send them."""
        with self._lock:
            routes = self.book.routes()
        if not routes:
            return
        counts = self._capacity() if self._capacity is not None else self._facts
        if counts is None:
            return  # what has workers here is not known yet
        for service in sorted(routes):  # a claim where nothing is due costs a lookup
            workers, _ = counts.get(service, (0, 0))
            if workers > 0 and not self._overdue(service):
                continue  # local workers first
            self._claim_for(service, now, overflow=workers > 0)

    def _overdue(self, service: str) -> bool:
        """The oldest due request of `service` has waited here past peer_overflow_after."""
        due = self.store.next_due_at([service])
        limit = datetime.now(UTC).replace(tzinfo=None) - timedelta(
            seconds=self.settings.peer_overflow_after)
        return due is not None and due.replace(tzinfo=None) <= limit

    def _claim_for(self, service: str, now: float, *, overflow: bool) -> None:
        with self._lock:
            target = self.book.choose(service)
            if target is None:
                return
            room = self.book.window - self.book.unanswered(target.name)
            if overflow:  # only what the peer has free workers for
                assert target.state is not None
                workers, queued = target.state.services[service]
                room = min(room, max(1, workers - queued))
        client = self._clients[target.name]
        limit = min(room, _CLAIM_BATCH) if client.free_slots > 0 else 0
        if limit <= 0:
            return
        lease = self.settings.peer_lease
        claimed = self.store.exchange([], [], {service: limit}, lease).claimed
        self._more = self._more or len(claimed) == limit
        batch: list[tuple[str, tuple[bytes, ...]]] = []
        for request in claimed:
            with self._lock:
                send = self.book.claimed(request.id, service, target, now, lease)
            if send:
                batch.append((request.id, tuple(request.request)))
        self._send_forwards(client, service, batch)

    @staticmethod
    def _send_forwards(client: PipelinedClient, service: str,
                       requests: Sequence[tuple[str, tuple[bytes, ...]]], *,
                       alone: bool = False) -> None:
        """Send requests to a peer as keyed titanic.requests: in batches of at most
        _BATCH_BYTES of bodies (`alone`: one request a message, plain keyed form)."""
        name = service.encode()
        chunk: list[tuple[str, tuple[bytes, ...]]] = []
        size = 0

        def flush() -> None:
            if len(chunk) == 1:
                request_id, frames = chunk[0]
                body = tsp.build_request(name, frames, key=request_id)
            else:
                body = tsp.build_batch(name, [tsp.BatchItem(frames, request_id)
                                              for request_id, frames in chunk])
            client.send(tsp.REQUEST_SERVICE, body, ("submit", service, tuple(chunk)))
            chunk.clear()

        for request_id, frames in requests:
            length = sum(len(frame) for frame in frames)
            if chunk and (alone or size + length > _BATCH_BYTES):
                flush()
                size = 0
            chunk.append((request_id, frames))
            size += length
        if chunk:
            flush()

    def _send_polls(self, now: float) -> None:
        """Ask each peer for the replies of its forwards whose ask is due, in batches."""
        room = {name: client.free_slots * peer.MAX_REPLIES_ASKED
                for name, client in self._clients.items()}
        with self._lock:
            due = self.book.polls_due(now, room)
        by_peer: dict[str, list[tuple[str, bytes]]] = {}
        for request_id, forward in due:
            assert forward.far_id is not None
            by_peer.setdefault(forward.peer, []).append((request_id, forward.far_id.encode()))
        for name, asked in by_peer.items():
            for start in range(0, len(asked), peer.MAX_REPLIES_ASKED):
                batch = asked[start:start + peer.MAX_REPLIES_ASKED]
                self._clients[name].send(peer.REPLIES_SERVICE, [far for _, far in batch],
                                         ("fetch", tuple(request_id for request_id, _ in batch)))

    def replies(self, body: Frames, caller: Caller | None = None) -> Frames:
        """titanic.replies' answer: titanic.reply's answer for each UUID asked about."""
        if not 0 < len(body) <= peer.MAX_REPLIES_ASKED:
            return tsp.Status.UNKNOWN.answer(
                f"bad request: titanic.replies takes 1 to {peer.MAX_REPLIES_ASKED} UUIDs")
        return peer.build_replies_answer([handle_reply(self.store, [frame], caller)
                                          for frame in body])

    def _close_asked(self) -> None:
        """Close the requests of ours whose replies an asking site has stored."""
        with self._lock:
            closing, self._closing = self._closing, []
        for request_ids, owners in closing:
            if owners is None:
                self.store.close_many(request_ids)
            else:
                for request_id in request_ids:
                    self.store.close(request_id, owners=owners)

    # -- what came back -------------------------------------------------------------------------

    def _settle(self, now: float, done: list[Completion]) -> None:
        """Act on the completions of a wait: links, acknowledgements, replies (stored together)."""
        replies: list[tuple[str, Frames]] = []
        sent: list[tuple[str, str, str]] = []
        for tag, reply, error, _ in done:
            assert isinstance(tag, tuple)
            kind: Hashable = tag[0]
            if kind == "ask":
                self._asked(tag[1], tag[2], reply, now)
            elif kind == "facts":
                self._heard_facts(reply)
            elif kind == "submit":
                sent += self._acknowledged(tag[1], tag[2], reply, error, now)
            elif kind == "fetch":
                replies += self._fetched(tag[1], reply, now)
        if sent:  # for a restarted link to ask for their replies at once
            self.store.record_forwards(sent)
        if replies:
            self.store.complete_many(replies)
            with self._lock:
                for request_id, _ in replies:
                    forward = self.book.replied(request_id, now)
                    if forward is not None and forward.far_id is not None:
                        self._closes[forward.peer].append(forward.far_id)
            self._settled += [request_id for request_id, _ in replies]

    def _forget_settled(self) -> None:
        """Forget the forwards of the requests whose replies are stored."""
        if self._settled:
            settled, self._settled = self._settled, []
            self.store.forget_forwards(settled)

    def _asked(self, name: str, closes: tuple[str, ...], reply: Frames | None, now: float) -> None:
        state: peer.SiteState | None = None
        if reply is not None:
            try:
                state = peer.parse_answer(reply)
            except ProtocolError as exc:
                log.warning("peer %s: %s", name, exc)
        with self._lock:
            if state is not None:
                changed, up = self.book.answered(name, state, time.time()), True
            else:
                changed, up = self.book.missed(name, time.time()), False
                self._closes[name][:0] = closes  # with a later ask
        if changed:
            log.info("peer %s: link %s (site %s)", name, "up" if up else "down",
                     state.site if state else "-")

    def _heard_facts(self, reply: Frames | None) -> None:
        facts = mmi.parse_facts(reply) if reply is not None else None
        if facts is None or not isinstance(facts.get("services"), dict):
            return
        counts: dict[str, tuple[int, int]] = {}
        for name, value in facts["services"].items():
            if isinstance(value, dict):
                counts[name] = (int(value.get("workers", 0)), int(value.get("queued", 0)))
        self._facts = counts

    def _acknowledged(self, service: str, requests: tuple[tuple[str, tuple[bytes, ...]], ...],
                      reply: Frames | None, error: Exception | None,
                      now: float) -> list[tuple[str, str, str]]:
        """A forward's titanic.request answer (one UUID a request, in order): the far UUIDs
        (returned with their peer, to remember); or the requests back to pending (the link
        broke, the peer is full), sent again one by one (a batch refused), or failed (a request
        the peer refuses for good)."""
        far_ids: list[str] | None = None
        if reply and reply[0][:3] == b"200" and len(reply) == len(requests) + 1:
            try:
                far_ids = [tsp.parse_uuid(frame) for frame in reply[1:]]
            except ProtocolError:
                far_ids = None
        if far_ids is not None:
            sent: list[tuple[str, str, str]] = []
            with self._lock:
                for (request_id, _), far_id in zip(requests, far_ids, strict=True):
                    self.book.acknowledged(request_id, far_id, now)
                    forward = self.book.forwards.get(request_id)
                    if forward is not None:
                        sent.append((request_id, forward.peer, far_id))
            return sent
        refused = bool(reply) and reply[0][:3] == b"400"  # type: ignore[index]
        if refused and len(requests) > 1:
            with self._lock:
                forward = self.book.forwards.get(requests[0][0])
            client = self._clients.get(forward.peer) if forward is not None else None
            if client is not None:  # which one is at fault: each alone
                self._send_forwards(client, service, requests, alone=True)
                return []
        for request_id, _ in requests:
            with self._lock:
                forward = self.book.dropped(request_id)
            where = forward.peer if forward is not None else "?"
            if refused:
                self.store.fail(request_id, f"site {where} refused it: "
                                            f"{tsp.answer_text(reply or [])}")
            else:
                self.store.release(request_id)
                log.debug("peer %s: %s not taken (%s)", where, request_id,
                          error or tsp.answer_text(reply or []))
        return []

    def _fetched(self, request_ids: tuple[str, ...], reply: Frames | None,
                 now: float) -> list[tuple[str, Frames]]:
        """A titanic.replies answer: the replies to store; the rest asked again later, failed
        or taken back."""
        answers: list[list[bytes]] | None = None
        if reply is not None:
            try:
                answers = peer.parse_replies_answer(reply, len(request_ids))
            except ProtocolError as exc:
                log.warning("peers: %s", exc)
        if answers is None:
            with self._lock:
                for request_id in request_ids:
                    self.book.still_pending(request_id, now)
            return []
        with self._lock:
            self.book.learn({request_id: answer[0] == b"200"
                             for request_id, answer in zip(request_ids, answers, strict=True)})
        found: list[tuple[str, Frames]] = []
        for request_id, answer in zip(request_ids, answers, strict=True):
            if answer[0] == b"200":
                found.append((request_id, answer[1:]))
            else:
                self._not_done(request_id, answer, now)
        return found

    def _not_done(self, request_id: str, answer: Frames, now: float) -> None:
        """A forward whose peer has no reply: pending there (ask again later), failed or
        expired there (it fails here too), or unknown there (ours to send again)."""
        if answer[0][:3] != b"400":
            with self._lock:
                self.book.still_pending(request_id, now)
            return
        with self._lock:
            forward = self.book.dropped(request_id)
        text = tsp.answer_text(answer)
        self.store.forget_forwards([request_id])
        if text.startswith((tsp.FAILED_PREFIX, tsp.EXPIRED_PREFIX)):
            where = forward.peer if forward is not None else "?"
            self.store.fail(request_id, f"at site {where}: {text}")
            if forward is not None and forward.far_id is not None:
                with self._lock:
                    self._closes[forward.peer].append(forward.far_id)
        else:  # the far site lost it (closed, purged): ours to send again
            self.store.release(request_id)
