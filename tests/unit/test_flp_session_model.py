"""FreelanceSession under any order of events (Hypothesis): servers that answer, hang, refuse
or come back, replies delivered late or never, time moving by any amount. Whatever happens, every
request ends exactly once, with its own reply or an error, and none outlives its timeout."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from titanic.client.flp_session import Completion, FreelanceSession
from titanic.errors import FreelanceTimeoutError, ServiceRefusedError
from titanic.protocol import flp

SERVERS = [b"tcp://127.0.0.1:1", b"tcp://127.0.0.1:2", b"tcp://127.0.0.1:3"]
#: The services each server has (the third has none: it answers 404 to everything).
SERVICES = {SERVERS[0]: {b"a", b"b"}, SERVERS[1]: {b"a"}, SERVERS[2]: set()}


class FreelanceModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.session = FreelanceSession([s.decode() for s in SERVERS], self.now,
                                        ping_interval=0.25, liveness=4, attempt_timeout=1.0,
                                        probe_interval=0.005)
        self.state = dict.fromkeys(SERVERS, "up")  # up | hung (silent) | gone (refused)
        self.to_servers: list[tuple[bytes, list[bytes]]] = []
        self.to_client: list[tuple[bytes, list[bytes]]] = []
        self.started: dict[int, tuple[bytes, float]] = {}  # tag -> (service, deadline)
        self.done: dict[int, Completion] = {}
        self.next_tag = 0

    def _collect(self) -> None:
        while out := self.session.take_outbox():  # a refused send may queue another
            for identity, frames in out:
                if self.state[identity] == "gone":
                    self.session.unreachable(identity, frames, self.now)
                else:
                    self.to_servers.append((identity, frames))
        for completion in self.session.take_completions():
            assert isinstance(completion.tag, int)
            assert completion.tag not in self.done, "a request ended twice"
            self.done[completion.tag] = completion

    @rule(service=st.sampled_from([b"a", b"b", b"c"]),
          timeout=st.sampled_from([0.5, 2.0, 5.0]))
    def start(self, service: bytes, timeout: float) -> None:
        tag = self.next_tag
        self.next_tag += 1
        self.session.request(service, [b"%d" % tag], timeout, self.now, tag=tag)
        self.started[tag] = (service, self.now + timeout)
        self._collect()

    @precondition(lambda self: self.to_servers)
    @rule(data=st.data())
    def server_reads(self, data: st.DataObject) -> None:
        identity, frames = self.to_servers.pop(data.draw(
            st.integers(0, len(self.to_servers) - 1)))
        if self.state[identity] != "up":
            return  # hung: read and never answered
        if flp.is_ping(frames):
            self.to_client.append((identity, [flp.PONG]))
            return
        request = flp.parse_request(frames)
        if request.service in SERVICES[identity]:
            reply = flp.build_reply(request.sequence, flp.OK, request.body)
        else:
            reply = flp.build_error(request.sequence, flp.UNKNOWN_SERVICE, "no such service")
        self.to_client.append((identity, reply))

    @precondition(lambda self: self.to_client)
    @rule(data=st.data(), lose=st.booleans())
    def client_reads(self, data: st.DataObject, lose: bool) -> None:
        identity, frames = self.to_client.pop(data.draw(
            st.integers(0, len(self.to_client) - 1)))
        if not lose:
            self.session.receive(identity, frames, self.now)
            self._collect()

    @rule(server=st.sampled_from(SERVERS), state=st.sampled_from(["up", "hung", "gone"]))
    def server_changes(self, server: bytes, state: str) -> None:
        self.state[server] = state

    @rule(dt=st.sampled_from([0.001, 0.01, 0.1, 0.3, 1.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.session.tick(self.now)
        self._collect()
        overdue = [tag for tag, (_, deadline) in self.started.items()
                   if deadline <= self.now and tag not in self.done]
        assert overdue == [], "a request outlived its timeout"

    @invariant()
    def every_request_is_pending_or_done_once(self) -> None:
        assert self.session.in_flight + len(self.done) == len(self.started)

    @invariant()
    def each_ending_is_its_own(self) -> None:
        for tag, completion in self.done.items():
            service, _ = self.started[tag]
            if completion.error is None:
                assert completion.reply == [b"%d" % tag]
                assert completion.server is not None
                assert service in SERVICES[completion.server.encode()]
            else:
                assert isinstance(completion.error, FreelanceTimeoutError | ServiceRefusedError)

    def teardown(self) -> None:
        latest = max((deadline for _, deadline in self.started.values()), default=self.now)
        self.now = max(self.now, latest)
        self.session.tick(self.now)
        self._collect()
        assert self.session.in_flight == 0, "a request outlived its timeout"
        assert set(self.done) == set(self.started)


FreelanceModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                            deadline=None)
test_freelance_session_model = FreelanceModel.TestCase
