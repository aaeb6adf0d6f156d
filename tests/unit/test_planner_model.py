"""The dispatcher's planner on MemoryStore, driven by Hypothesis against the delivery promises of
docs/concepts.md: submits, presence answers, replies, failure reports, refusals, timeouts, closes
and dispatcher crashes in any order.

After every step: an acknowledged request that was not closed is in the store; a request is in
flight at most once (never two leases at once). At the end, with workers everywhere and every
forward answered, every request is done or failed: none is left behind."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from titanic.client import Completion
from titanic.dispatch.planner import Forwarded, Planner, PresenceCheck
from titanic.dispatch.services import handle_close
from titanic.dispatch.settings import DispatcherSettings, DispatcherStats
from titanic.errors import BrokerRefusedError
from titanic.protocol.mdp import Frames
from titanic.store import RequestStatus
from titanic.testing import MemoryStore, MemoryTransport

SERVICES = ("a", "b")
#: Leases of 50 ms: a dead dispatcher's requests come due again that soon after their release.
LEASE_S = 0.05
SETTINGS = DispatcherSettings(max_in_flight_per_service=3, max_attempts=3, backoff=0.0,
                              backoff_max=0.0, reply_linger=0.0, forward_linger=0.0,
                              request_timeout=LEASE_S, lease_margin=0.0)
FINAL = (RequestStatus.DONE, RequestStatus.FAILED)


class PlannerModel(RuleBasedStateMachine):
    """A Planner, its MemoryStore and transport, and what was acknowledged."""

    @initialize()
    def start(self) -> None:
        self.store = MemoryStore()
        self.now = 0.0
        self.sequence = 0
        self.acknowledged: dict[str, bytes] = {}  # uuid -> body
        self.closed: set[str] = set()
        self._new_dispatcher()

    def _new_dispatcher(self) -> None:
        self.transport = MemoryTransport(16)
        self.planner = Planner(self.store, self.transport, SETTINGS, DispatcherStats())

    def _turn(self, submits: list[Frames] | None = None,
              completions: list[Completion] | None = None) -> list[Frames]:
        self.now += 0.01
        answers: list[Frames] = []
        self.planner.turn(submits or [], completions or [], self.now, answer=answers.extend)
        return answers

    def _in_flight(self, kind: type) -> list[object]:
        return [tag for tag in self.transport.in_flight if isinstance(tag, kind)]

    # -- rules ----------------------------------------------------------------------------------

    @rule(service=st.sampled_from(SERVICES))
    def submit(self, service: str) -> None:
        self.sequence += 1
        body = b"%d" % self.sequence
        [(status, request_id)] = self._turn([[service.encode(), body]])
        assert status == b"200"
        self.acknowledged[request_id.decode()] = body

    @precondition(lambda self: bool(self._in_flight(PresenceCheck)))
    @rule(data=st.data(), present=st.booleans())
    def presence(self, data: st.DataObject, present: bool) -> None:
        tag = data.draw(st.sampled_from(self._in_flight(PresenceCheck)))
        self._turn(completions=[self.transport.complete(tag, [b"200" if present else b"404"])])

    @precondition(lambda self: bool(self._in_flight(Forwarded)))
    @rule(data=st.data(), outcome=st.sampled_from(["reply", "retry", "permanent", "timeout",
                                                   "refused"]))
    def answer(self, data: st.DataObject, outcome: str) -> None:
        tag = data.draw(st.sampled_from(self._in_flight(Forwarded)))
        assert isinstance(tag, Forwarded)
        body = self.acknowledged[tag.request_id]
        if outcome == "reply":
            done = self.transport.complete(tag, [b"done:" + body])
        elif outcome in ("retry", "permanent"):
            done = self.transport.complete(tag, [b"titanic.failure", outcome.encode(),
                                                 b"ValueError: no"])
        elif outcome == "timeout":
            done = self.transport.time_out(tag)
        else:
            self.transport.time_out(tag)  # taken out of flight, answered as a refusal
            done = Completion(tag, None, BrokerRefusedError(503, "queue full", tag.service))
        self._turn(completions=[done])

    @precondition(lambda self: bool(self.acknowledged))
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.acknowledged)))
        assert handle_close(self.store, [request_id.encode()]) == [b"200"]
        self.closed.add(request_id)

    @rule()
    def idle_turn(self) -> None:
        self.planner.survey()
        self._turn()

    @rule()
    def dispatcher_dies(self) -> None:
        """Killed: what it had in flight is lost; another starts, and the leases run out."""
        self._new_dispatcher()
        # As the new dispatcher's clean-up finds them once the leases have run out; they come
        # due again at the moment given, LEASE_S from now.
        self.store.release_stale(now=datetime.now(UTC) + timedelta(seconds=LEASE_S))
        self.planner.survey()

    # -- after every step -----------------------------------------------------------------------

    @invariant()
    def nothing_acknowledged_is_lost(self) -> None:
        if not hasattr(self, "store"):
            return
        for request_id in set(self.acknowledged) - self.closed:
            stored = self.store.get(request_id)
            assert stored is not None, f"acknowledged request {request_id} lost"
            assert stored.request == (self.acknowledged[request_id],)

    @invariant()
    def never_two_leases_at_once(self) -> None:
        if not hasattr(self, "transport"):
            return
        ids = [tag.request_id for tag in self._in_flight(Forwarded)]  # type: ignore[attr-defined]
        assert len(ids) == len(set(ids)), f"in flight twice: {ids}"
        for request_id in ids:
            stored = self.store.get(request_id)
            assert stored is None or stored.status is not RequestStatus.PENDING, (
                "a request in flight is also pending: it could be claimed again")

    def teardown(self) -> None:
        """Every service has workers and every forward is answered: all requests end."""
        if not hasattr(self, "store"):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            completions = [self.transport.complete(tag, [b"200"])
                           for tag in self._in_flight(PresenceCheck)]
            completions += [self.transport.complete(
                tag, [b"done:" + self.acknowledged[tag.request_id]])  # type: ignore[attr-defined]
                for tag in self._in_flight(Forwarded)]
            self.planner.survey()
            self._turn(completions=completions)
            open_ = [request_id for request_id in set(self.acknowledged) - self.closed
                     if (stored := self.store.get(request_id)) is not None
                     and stored.status not in FINAL]
            if not open_ and not self.transport.in_flight:
                break
            if not completions:
                time.sleep(0.005)  # released requests come due LEASE_S after their release
        for request_id in set(self.acknowledged) - self.closed:
            stored = self.store.get(request_id)
            assert stored is not None and stored.status in FINAL, (request_id, stored)
            if stored.status is RequestStatus.DONE:
                assert stored.reply == (b"done:" + self.acknowledged[request_id],)


TestPlannerModel = PlannerModel.TestCase
TestPlannerModel.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
