"""The dispatcher's turns against MemoryStore and MemoryTransport: no socket, no waiting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from titanic.client import Completion
from titanic.client.mdp import Partial
from titanic.dispatch.planner import Forwarded, Planner, PresenceCheck
from titanic.dispatch.settings import DispatcherSettings, DispatcherStats
from titanic.errors import StoreError
from titanic.protocol.failure import FailureKind, build_failure
from titanic.protocol.mdp import Frames
from titanic.store import RequestStatus
from titanic.testing import MemoryStore, MemoryTransport

SETTINGS = DispatcherSettings(max_in_flight_per_service=2, max_attempts=2, backoff=0.0,
                              backoff_max=0.0)


class Turns:
    """A planner over a MemoryStore and a MemoryTransport, and what its turns answered."""

    def __init__(self, settings: DispatcherSettings = SETTINGS, slots: int = 8, *,
                 step: float = 0.1) -> None:
        self.step = step  # between turns: beyond forward_linger unless a test says otherwise
        self.store = MemoryStore()
        self.transport = MemoryTransport(slots)
        self.stats = DispatcherStats()
        self.planner = Planner(self.store, self.transport, settings, self.stats)
        self.answers: list[Frames] = []
        self.now = 0.0

    def turn(self, submits: list[Frames] | None = None,
             completions: list[Completion] | None = None, *, claim: bool = True) -> bool:
        self.now += self.step
        return self.planner.turn(submits or [], completions or [], self.now,
                                 answer=self.answers.extend, claim=claim)

    def submit(self, service: bytes, *frames: bytes) -> str:
        self.turn([[service, *frames]])
        status, request_id = self.answers[-1]
        assert status == b"200"
        return request_id.decode()

    def say_present(self, service: str) -> None:
        """Answer the pending mmi.service question about `service` with 200."""
        self.turn(completions=[self.transport.complete(PresenceCheck(service), [b"200"])])

    def forwarded(self) -> list[Forwarded]:
        return [tag for tag in self.transport.in_flight if isinstance(tag, Forwarded)]


def test_a_request_is_stored_before_its_200() -> None:
    t = Turns()
    request_id = t.submit(b"echo", b"", b"\x00")
    stored = t.store.get(request_id)
    assert stored is not None and stored.request == (b"", b"\x00")
    assert stored.status is RequestStatus.PENDING


def test_a_service_gets_requests_only_once_mmi_says_it_has_workers() -> None:
    t = Turns()
    request_id = t.submit(b"echo", b"hello")
    assert t.transport.sent == [(b"mmi.service", [b"echo"], PresenceCheck("echo"))]
    t.say_present("echo")
    assert t.transport.sent[-1] == (b"echo", [b"hello"], Forwarded(request_id, "echo"))
    stored = t.store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.DISPATCHED


def test_a_service_without_workers_is_asked_about_again_but_sent_nothing() -> None:
    t = Turns()
    t.submit(b"nobody", b"x")
    t.turn(completions=[t.transport.complete(PresenceCheck("nobody"), [b"404"])])
    assert t.forwarded() == []
    t.now += SETTINGS.presence_interval
    t.turn()
    assert t.transport.in_flight == [PresenceCheck("nobody")]


def test_the_answer_goes_out_before_the_claims_are_sent() -> None:
    t = Turns()
    t.submit(b"echo", b"first")
    t.say_present("echo")  # the service is known to have workers from now on
    events: list[str] = []
    sent_before = len(t.transport.sent)
    t.planner.turn([[b"echo", b"second"]], [], t.now + 0.1,
                   answer=lambda answers: events.append(f"answer {len(t.transport.sent)}"))
    assert events == [f"answer {sent_before}"]  # nothing claimed was sent yet
    assert [tag.service for tag in t.forwarded()] == ["echo", "echo"]


def count_exchanges(t: Turns) -> list[tuple[int, int, dict[str, int], dict[str, int]]]:
    """Each store exchange from now on: (new requests, replies, claims, claim_new)."""
    seen: list[tuple[int, int, dict[str, int], dict[str, int]]] = []
    exchange = t.store.exchange

    def counted(new, replies, claims, lease, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((len(new), len(replies), dict(claims), dict(kwargs.get("claim_new") or {})))
        return exchange(new, replies, claims, lease, **kwargs)

    t.store.exchange = counted  # type: ignore[method-assign]
    return seen


def test_a_request_is_stored_claimed_and_sent_in_one_transaction() -> None:
    t = Turns()
    t.submit(b"echo", b"first")
    t.say_present("echo")  # claims "first": nothing else is due there now
    exchanges = count_exchanges(t)
    request_id = t.submit(b"echo", b"second")
    # One commit, and no claim query: the new request is stored claimed.
    assert exchanges == [(1, 0, {}, {"echo": 1})]
    assert t.forwarded()[-1] == Forwarded(request_id, "echo")
    stored = t.store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.DISPATCHED
    assert stored.attempts == 1


def with_one_due(t: Turns) -> tuple[list[str], Completion]:
    """Three requests for "echo": two in flight (its room), one due; and the first's reply."""
    ids = [t.submit(b"echo", str(n).encode()) for n in range(3)]
    t.say_present("echo")
    return ids, t.transport.complete(Forwarded(ids[0], "echo"), [b"reply 0"])


def test_new_requests_do_not_overtake_older_due_ones() -> None:
    t = Turns()
    ids, first = with_one_due(t)
    exchanges = count_exchanges(t)
    t.turn([[b"echo", b"new"]], [first])
    # A lone request's commit first; then the reply, and the claim of the oldest due.
    assert exchanges == [(1, 0, {}, {}), (0, 1, {"echo": 1}, {})]
    assert [tag.request_id for tag in t.forwarded()] == ids[1:]


def test_several_new_requests_share_one_commit_with_replies_and_claims() -> None:
    t = Turns()
    ids, first = with_one_due(t)
    exchanges = count_exchanges(t)
    t.turn([[b"echo", b"new 1"], [b"echo", b"new 2"]], [first])
    assert exchanges == [(2, 1, {"echo": 1}, {})]  # one commit; the oldest due is claimed
    assert [tag.request_id for tag in t.forwarded()] == ids[1:]
    assert [answer[0] for answer in t.answers[-2:]] == [b"200", b"200"]


def test_a_request_with_an_idempotency_key_is_claimed_not_stored_claimed() -> None:
    t = Turns()
    t.submit(b"echo", b"first")
    t.say_present("echo")
    exchanges = count_exchanges(t)
    t.turn([[b"", b"key-1", b"echo", b"keyed"]], [])
    assert exchanges == [(1, 0, {}, {}), (0, 0, {"echo": 1}, {})]  # stored, then claimed
    assert t.answers[-1][0] == b"200"
    request_id = t.answers[-1][1].decode()
    assert t.forwarded()[-1] == Forwarded(request_id, "echo")


def test_a_reply_is_stored_and_frees_room_for_the_next() -> None:
    t = Turns()
    ids = [t.submit(b"echo", str(n).encode()) for n in range(3)]
    t.say_present("echo")
    assert [tag.request_id for tag in t.forwarded()] == ids[:2]  # two in flight per service
    first = t.transport.complete(Forwarded(ids[0], "echo"), [b"reply 0"])
    t.turn(completions=[first])
    done = t.store.get(ids[0])
    assert done is not None and done.status is RequestStatus.DONE
    assert done.reply == (b"reply 0",)
    assert [tag.request_id for tag in t.forwarded()] == ids[1:]
    assert (t.stats.completed, t.stats.dispatched) == (1, 3)


def test_a_reply_alone_waits_for_the_next_turn_that_commits() -> None:
    t = Turns()
    t.submit(b"echo", b"first")
    t.say_present("echo")
    (sent,) = t.forwarded()
    exchanges = count_exchanges(t)
    t.planner.turn([], [t.transport.complete(sent, [b"reply"])], t.now,
                   answer=t.answers.extend)
    assert exchanges == [] and t.planner.held_until == t.now + SETTINGS.reply_linger
    stored = t.store.get(sent.request_id)
    assert stored is not None and stored.status is RequestStatus.DISPATCHED
    second = t.submit(b"echo", b"second")  # stored with the commit after the answer
    assert exchanges == [(1, 0, {}, {"echo": 1}), (0, 1, {}, {})]
    assert t.planner.held_until is None
    done = t.store.get(sent.request_id)
    assert done is not None and done.status is RequestStatus.DONE and done.reply == (b"reply",)
    assert t.forwarded() == [Forwarded(second, "echo")] and t.stats.completed == 1


def reply_alone(settings: DispatcherSettings = SETTINGS) -> tuple[Turns, Forwarded]:
    """One request for "echo" forwarded, and its reply back in a turn of its own."""
    t = Turns(settings)
    t.submit(b"echo", b"only")
    t.say_present("echo")
    (sent,) = t.forwarded()
    t.planner.turn([], [t.transport.complete(sent, [b"reply"])], t.now,
                   answer=t.answers.extend)
    return t, sent


def test_a_held_reply_is_stored_alone_once_the_linger_ran_out() -> None:
    t, sent = reply_alone()
    assert t.planner.held_until is not None
    t.planner.turn([], [], t.planner.held_until - 1e-6, answer=t.answers.extend)
    still = t.store.get(sent.request_id)
    assert still is not None and still.status is RequestStatus.DISPATCHED
    t.planner.turn([], [], t.planner.held_until, answer=t.answers.extend)
    done = t.store.get(sent.request_id)
    assert done is not None and done.status is RequestStatus.DONE
    assert t.planner.held_until is None


def test_a_fetch_stores_the_replies_held_back_first() -> None:
    t, sent = reply_alone()
    assert t.planner.held_until is not None
    t.planner.someone_waits(t.now)  # a titanic.reply, about to be served
    done = t.store.get(sent.request_id)
    assert done is not None and done.status is RequestStatus.DONE
    assert t.planner.held_until is None and t.stats.completed == 1


def test_without_a_linger_a_reply_is_stored_at_once() -> None:
    t, sent = reply_alone(replace(SETTINGS, reply_linger=0.0))
    done = t.store.get(sent.request_id)
    assert done is not None and done.status is RequestStatus.DONE


def back_to_back(settings: DispatcherSettings = SETTINGS) -> tuple[Turns, str]:
    """Requests for "echo" one at a time, 1 ms apart (forward_linger is 5 ms), the presence
    answer between them: the first forwarded at once, the second's forwarding kept; its id."""
    t = Turns(settings, step=0.0005)
    first = t.submit(b"echo", b"first")
    t.say_present("echo")
    assert t.forwarded() == [Forwarded(first, "echo")]
    return t, t.submit(b"echo", b"second")


def test_a_request_back_to_back_is_forwarded_before_the_next_ones_commit() -> None:
    t, second = back_to_back()
    assert len(t.forwarded()) == 1
    # Kept until the next submission, or twice the time since the one before at most.
    assert t.planner.forward_until == pytest.approx(t.now + 2 * 0.001)
    assert t.planner.forwarding()["echo"] == (2, 2)  # its room is taken while it waits
    stored = t.store.get(second)
    assert stored is not None and stored.status is RequestStatus.DISPATCHED
    sent_at_commit: list[int] = []
    exchange = t.store.exchange

    def noted(*args, **kwargs):  # type: ignore[no-untyped-def]
        sent_at_commit.append(len(t.transport.sent))
        return exchange(*args, **kwargs)

    t.store.exchange = noted  # type: ignore[method-assign]
    sent_before = len(t.transport.sent)
    t.submit(b"echo", b"third")
    assert sent_at_commit == [sent_before + 1]  # the second went out before the third's commit
    assert t.forwarded()[-1] == Forwarded(second, "echo")
    assert (t.stats.dispatched, t.stats.forwards_kept) == (2, 1)  # the third has no room yet


def test_a_kept_forward_goes_out_when_forward_linger_runs_out() -> None:
    t, second = back_to_back()
    until = t.planner.forward_until
    assert until is not None
    t.planner.turn([], [], until - 1e-6, answer=t.answers.extend)
    assert Forwarded(second, "echo") not in t.forwarded()
    t.planner.turn([], [], until, answer=t.answers.extend)
    assert t.forwarded()[-1] == Forwarded(second, "echo") and t.planner.forward_until is None


def test_a_kept_forward_goes_out_at_shutdown() -> None:
    t, second = back_to_back()
    t.turn(claim=False)
    assert t.forwarded()[-1] == Forwarded(second, "echo")
    t.planner.release_unanswered(t.transport.in_flight)  # and is released with the rest
    stored = t.store.get(second)
    assert stored is not None and stored.status is RequestStatus.PENDING


def test_back_to_back_the_replies_wait_for_a_turn_without_a_submitter() -> None:
    t = Turns(step=0.0005)
    t.submit(b"echo", b"first")
    t.say_present("echo")
    (sent,) = t.forwarded()
    exchanges = count_exchanges(t)
    t.planner.turn([[b"echo", b"second"]], [t.transport.complete(sent, [b"reply"])],
                   t.now + 0.0005, answer=t.answers.extend)
    assert exchanges == [(1, 0, {}, {"echo": 1})]  # its own commit only: the reply is held
    assert t.planner.held_until is not None
    t.planner.turn([], [], t.planner.held_until, answer=t.answers.extend)
    done = t.store.get(sent.request_id)
    assert done is not None and done.status is RequestStatus.DONE


def test_a_fetch_sends_what_was_kept_and_ends_the_run_of_requests() -> None:
    t, second = back_to_back(replace(SETTINGS, max_in_flight_per_service=8))
    t.now += 0.0005
    t.planner.someone_waits(t.now)  # a titanic.reply: its client waits for a result
    assert t.forwarded()[-1] == Forwarded(second, "echo") and t.planner.forward_until is None
    third = t.submit(b"echo", b"third")  # 1 ms after the second, but after a fetch
    assert t.forwarded()[-1] == Forwarded(third, "echo") and t.planner.forward_until is None


def test_without_a_forward_linger_a_request_back_to_back_is_forwarded_at_once() -> None:
    t = Turns(replace(SETTINGS, forward_linger=0.0), step=0.0005)
    t.submit(b"echo", b"first")
    t.say_present("echo")
    second = t.submit(b"echo", b"second")
    assert t.forwarded()[-1] == Forwarded(second, "echo") and t.planner.forward_until is None
    assert t.stats.forwards_kept == 0


def test_more_is_reported_while_a_service_fills_its_room() -> None:
    t = Turns()
    for n in range(2):
        t.submit(b"echo", str(n).encode())
    t.turn(completions=[t.transport.complete(PresenceCheck("echo"), [b"200"])])
    assert len(t.forwarded()) == 2
    assert t.turn() is False  # no room left: nothing claimed, nothing more to look for


def test_a_timed_out_request_is_retried_then_fails_after_max_attempts() -> None:
    t = Turns()
    request_id = t.submit(b"slow", b"x")
    t.say_present("slow")
    t.turn(completions=[t.transport.time_out(Forwarded(request_id, "slow"))])
    stored = t.store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.PENDING
    assert t.stats.retried == 1
    # The retry is found by the next survey; the timeout made the planner forget that "slow"
    # has workers, so it asks again before sending.
    t.planner.survey()
    t.turn()
    assert t.transport.in_flight == [PresenceCheck("slow")]
    t.say_present("slow")
    t.turn(completions=[t.transport.time_out(Forwarded(request_id, "slow"))])
    stored = t.store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.FAILED
    assert stored.attempts == 2 and t.stats.failed == 1


def test_a_store_error_answers_500_and_bad_requests_400() -> None:
    t = Turns()

    def broken(*args: object, **kwargs: object) -> None:
        raise StoreError("disk on fire")

    t.store.exchange = broken  # type: ignore[method-assign,assignment]
    t.turn([[b"echo", b"ok"], []])
    assert t.answers[0][:2] == [b"500", b"store error: disk on fire"]
    assert t.answers[1][0] == b"400" and t.answers[1][1].startswith(b"bad request")
    assert t.stats.store_errors == 1


def test_requests_in_flight_at_shutdown_go_back_to_pending() -> None:
    t = Turns()
    request_id = t.submit(b"echo", b"x")
    t.say_present("echo")
    t.planner.release_unanswered(t.transport.in_flight)
    stored = t.store.get(request_id)
    assert stored is not None and stored.status is RequestStatus.PENDING
    assert t.stats.released == 1


def test_the_survey_finds_requests_stored_by_another_process() -> None:
    t = Turns()
    request_id = t.store.submit("echo", [b"from elsewhere"])
    t.turn()
    assert t.transport.sent == []  # nothing known to be due yet
    t.planner.survey()
    t.turn()
    t.say_present("echo")
    assert t.forwarded() == [Forwarded(request_id, "echo")]


@pytest.mark.parametrize("slots", [1, 3])
def test_never_more_in_flight_than_the_transport_has_slots(slots: int) -> None:
    t = Turns(replace(SETTINGS, max_in_flight_per_service=8), slots=slots)
    for n in range(5):
        t.submit(b"echo", str(n).encode())
    t.say_present("echo")
    assert len(t.transport.in_flight) == slots


def test_kept_forwards_keep_their_transport_slots() -> None:
    t = Turns(replace(SETTINGS, max_in_flight_per_service=8), slots=2, step=0.0005)
    first = t.submit(b"echo", b"first")
    t.say_present("echo")
    second = t.submit(b"echo", b"second")  # back to back: kept, one slot free
    assert t.forwarded() == [Forwarded(first, "echo")] and t.transport.free_slots == 1
    # Another process stored requests for a service not asked about yet, and one more for echo.
    t.store.submit("other", [b"x"])
    t.store.submit("echo", [b"due"])
    t.planner.survey()
    t.turn()  # no submission: the kept forward's slot is not given to a claim or a question
    assert t.transport.free_slots == 1
    t.submit(b"echo", b"third")  # sends the second; nothing more fits
    assert t.forwarded() == [Forwarded(first, "echo"), Forwarded(second, "echo")]
    assert t.transport.free_slots == 0


# -- streamed replies -------------------------------------------------------------------------

def streamed(t: Turns, parts: list[Frames], final: Frames) -> Completion:
    """The completion of the one forwarded request after `parts` came as its PARTIALs, each
    stored in a turn of its own."""
    [tag] = t.forwarded()
    for seq, body in enumerate(parts, 1):
        t.now += t.step
        t.planner.turn([], [], t.now, answer=t.answers.extend,
                       partials=[Partial(tag, seq, body)])
    done = t.transport.complete(tag, [frame for part in parts for frame in part] + final)
    return done._replace(final_from=sum(map(len, parts)))


def test_each_partial_is_stored_as_it_comes_and_the_final_is_the_last_part() -> None:
    t = Turns()
    request_id = t.submit(b"stream", b"x")
    t.say_present("stream")
    done = streamed(t, [[b"a"], [b"b", b"c"]], [b"d"])
    assert t.store.parts_after(request_id, 0) == [(1, (b"a",)), (2, (b"b", b"c"))]
    assert t.planner.take_progressed() == {request_id}
    t.turn(completions=[done])
    assert t.store.parts_after(request_id, 2) == [(3, (b"d",))]
    assert t.store.get(request_id).reply == (b"a", b"b", b"c", b"d")  # type: ignore[union-attr]


def test_a_failure_report_after_parts_is_retried_and_the_next_attempt_trims() -> None:
    t = Turns()
    request_id = t.submit(b"stream", b"x")
    t.say_present("stream")
    failed = streamed(t, [[b"1"], [b"2"], [b"3"]],
                      build_failure(FailureKind.RETRY, "RuntimeError: boom"))
    t.turn(completions=[failed])
    assert t.store.get(request_id).status is RequestStatus.PENDING  # type: ignore[union-attr]
    assert t.store.parts_after(request_id, 0) == [(1, (b"1",)), (2, (b"2",)), (3, (b"3",))]
    t.planner.survey()  # the retry is due: found by the next survey
    t.turn()
    done = streamed(t, [[b"1"]], [])  # the next attempt streams one part, then an empty FINAL
    t.turn(completions=[done])
    assert t.store.get(request_id).reply == (b"1",)  # type: ignore[union-attr]
    assert t.store.parts_after(request_id, 0) == [(1, (b"1",))], "the earlier 2 and 3 trimmed"


def test_a_service_held_back_by_its_rate_is_claimed_again_when_its_token_comes() -> None:
    t = Turns(replace(SETTINGS, max_in_flight_per_service=8))
    t.store.set_limit("echo", rate=1.0)
    t.submit(b"echo", b"a")
    t.submit(b"echo", b"b")
    t.say_present("echo")
    assert [tag.service for tag in t.forwarded()] == ["echo"]  # one token
    assert t.planner.limit_until == pytest.approx(t.now + 1.0, abs=0.2)
    assert "echo" not in t.planner.candidates
    t.turn()  # before its token: not even asked
    assert len(t.forwarded()) == 1
