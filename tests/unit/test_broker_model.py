"""The broker core against a model, driven by Hypothesis: clients, workers, replies, heartbeats
and time in any order, and after every step the core agrees with the model.

The model keeps what the core promises: a request is at a worker, waiting in its service's
queue (oldest first), answered, refused or expired, never two of these and never lost;
a worker holds no more than its credit and answers in order; a queue's counts are those of the
queue (BrokerCore.audit)."""

from __future__ import annotations

from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from titanic.broker.core import BrokerCore, Endpoint, Outgoing
from titanic.settings import BrokerSettings

SHARED = Endpoint.SHARED
SERVICES = (b"a", b"b")
CLIENTS = (b"C1", b"C2", b"C3")
WORKERS = (b"W1", b"W2", b"W3", b"W4")
TTL = 5.0
HEARTBEAT = 1.0
LIVENESS = 3


class BrokerModel(RuleBasedStateMachine):
    """BrokerCore beside a model of its queues, workers and requests."""

    @initialize()
    def start(self) -> None:
        self.core = BrokerCore(BrokerSettings(heartbeat_interval=HEARTBEAT,
                                              heartbeat_liveness=LIVENESS, request_ttl=TTL,
                                              queue_limit=6, busy_worker_timeout=0))
        self.now = 0.0
        self.sequence = 0
        #: Per service, request bodies waiting for a worker, oldest first.
        self.queued: dict[bytes, deque[bytes]] = {service: deque() for service in SERVICES}
        #: Per worker: its service, its last sign of life, and the bodies it holds in order.
        self.workers: dict[bytes, tuple[bytes, float, deque[bytes]]] = {}
        self.client_of: dict[bytes, bytes] = {}  # body -> client
        self.answered: set[bytes] = set()
        self.refused: set[bytes] = set()
        self.expired: set[bytes] = set()
        self.abandoned: set[bytes] = set()
        self.delivered: set[bytes] = set()  # every body a worker was ever given
        self.service_of: dict[bytes, bytes] = {}  # body -> service
        self.queued_at: dict[bytes, float] = {}  # body -> when it was sent
        self.last_sent: dict[bytes, bytes] = {}  # client -> its last body

    # -- what the core sent ---------------------------------------------------------------------

    def _take(self, out: list[Outgoing]) -> None:
        """Check each message the core sent against the model, and move the model along."""
        for to_worker, frames, _ in out:
            peer = frames[0]
            if to_worker and frames[3:4] == [b"\x02"]:  # a REQUEST: "", MDPW01, 0x02, client...
                body = frames[6]
                service, _, held = self.workers[peer]
                self._expire_head(service, body)
                assert self.queued[service] and self.queued[service][0] == body, (
                    "a worker was given a request out of its queue's order")
                self.queued[service].popleft()
                assert body not in self.delivered, "a request was given to a worker twice"
                self.delivered.add(body)
                held.append(body)
                credit = self.core._workers[peer].credit  # the model's view of it
                assert len(held) <= credit, "a worker was given more than its credit"
            elif not to_worker and len(frames) == 6 and frames[4] in (b"503", b"413"):
                body = self.last_sent[peer]
                service = self.service_of[body]
                assert self.queued[service] and self.queued[service][-1] == body
                self.queued[service].pop()
                self.refused.add(body)
            elif not to_worker:
                body = frames[4]
                assert self.client_of[body] == peer, "a reply went to another client"
                self.answered.add(body)

    # -- rules ----------------------------------------------------------------------------------

    @rule(worker=st.sampled_from(WORKERS), service=st.sampled_from(SERVICES))
    def ready(self, worker: bytes, service: bytes) -> None:
        if worker in self.workers:
            return  # a second READY is a protocol error, covered elsewhere
        self.workers[worker] = (service, self.now, deque())
        self._take(self.core.receive([worker, b"", b"MDPW01", b"\x01", service], SHARED,
                                     self.now))

    @rule(client=st.sampled_from(CLIENTS), service=st.sampled_from(SERVICES))
    def request(self, client: bytes, service: bytes) -> None:
        self.sequence += 1
        body = b"r%d" % self.sequence
        self.client_of[body] = client
        self.service_of[body] = service
        self.queued_at[body] = self.now
        self.last_sent[client] = body
        self.queued[service].append(body)  # until the core says where it went
        self._take(self.core.receive([client, b"", b"MDPC01", service, body], SHARED, self.now))

    @precondition(lambda self: any(held for _, _, held in self.workers.values()))
    @rule(data=st.data())
    def reply(self, data: st.DataObject) -> None:
        busy = sorted(worker for worker, (_, _, held) in self.workers.items() if held)
        worker = data.draw(st.sampled_from(busy))
        service, _, held = self.workers[worker]
        body = held.popleft()
        self.workers[worker] = (service, self.now, held)
        self._take(self.core.receive([worker, b"", b"MDPW01", b"\x03", self.client_of[body],
                                      b"", body], SHARED, self.now))
        assert body in self.answered

    @precondition(lambda self: bool(self.workers))
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(sorted(self.workers)))
        service, _, held = self.workers[worker]
        self.workers[worker] = (service, self.now, held)
        self._take(self.core.receive([worker, b"", b"MDPW01", b"\x04"], SHARED, self.now))

    @rule(seconds=st.sampled_from([0.3, 1.0, 2.5, 6.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        expired_before = self.core.stats.expired_requests
        self._take(self.core.tick(self.now))
        # Workers silent past their liveness are gone, with what they held.
        for worker, (_service, last_seen, held) in list(self.workers.items()):
            if self.now - last_seen > HEARTBEAT * LIVENESS:
                del self.workers[worker]
                self.abandoned.update(held)
        # Requests queued past their TTL are dropped, oldest first.
        expired = self.core.stats.expired_requests - expired_before
        for service in SERVICES:
            while expired and self.queued[service] and self._expires(self.queued[service][0]):
                self.expired.add(self.queued[service].popleft())
                expired -= 1
        assert expired == 0, "the core expired requests the model did not"

    def _expires(self, body: bytes) -> bool:
        return self.queued_at[body] + TTL < self.now

    def _expire_head(self, service: bytes, next_given: bytes) -> None:
        """Requests a worker's feed skipped at the front of the queue: their TTL had passed."""
        queue = self.queued[service]
        while queue and queue[0] != next_given and self._expires(queue[0]):
            self.expired.add(queue.popleft())

    # -- after every step -----------------------------------------------------------------------

    @invariant()
    def counts_agree(self) -> None:
        if not hasattr(self, "core"):
            return
        self.core.audit()
        assert self.core.book.total == sum(len(q) for q in self.queued.values())
        for worker, (service, _, held) in self.workers.items():
            assert self.core.has_workers(service)
            registered = self.core._workers[worker]
            assert [a[0] for a in registered.outstanding] == [self.client_of[b] for b in held]

    @invariant()
    def every_request_is_somewhere_once(self) -> None:
        if not hasattr(self, "core"):
            return
        places = [set(q) for q in self.queued.values()]
        places += [set(held) for _, _, held in self.workers.values()]
        places += [self.answered, self.refused, self.expired, self.abandoned]
        seen: set[bytes] = set()
        for place in places:
            assert not seen & place, f"in two places at once: {seen & place}"
            seen |= place
        assert seen == set(self.client_of), f"lost: {set(self.client_of) - seen}"


TestBrokerModel = BrokerModel.TestCase
TestBrokerModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
