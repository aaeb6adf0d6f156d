"""The broker's routing without sockets: frames and a fake clock in, frames to send out."""

from __future__ import annotations

import json

import pytest

from titanic.broker.core import BrokerCore, Endpoint, Outgoing
from titanic.broker.queues import queued_cost
from titanic.protocol.refusal import marked_routing_id
from titanic.settings import BrokerSettings

SHARED = Endpoint.SHARED
READY_01 = [b"", b"MDPW01", b"\x01"]
REPLY_01 = [b"", b"MDPW01", b"\x03"]
HEARTBEAT_01 = [b"", b"MDPW01", b"\x04"]
DISCONNECT_01 = [b"", b"MDPW01", b"\x05"]
DISCONNECT_02 = [b"MDPW02", b"\x06"]


def sent(out: list[Outgoing]) -> list[list[bytes]]:
    """The frames of every message to send, identity first."""
    return [frames for _, frames, _ in out]


def ready(core: BrokerCore, worker: bytes, service: bytes = b"echo",
          now: float = 0.0) -> list[Outgoing]:
    return core.receive([worker, *READY_01, service], SHARED, now)


def request(core: BrokerCore, client: bytes, service: bytes = b"echo", body: bytes = b"hi",
            now: float = 0.0) -> list[Outgoing]:
    return core.receive([client, b"", b"MDPC01", service, body], SHARED, now)


def reply(core: BrokerCore, worker: bytes, client: bytes, body: bytes = b"ok",
          now: float = 0.0) -> list[Outgoing]:
    return core.receive([worker, *REPLY_01, client, b"", body], SHARED, now)


def to_worker(worker: bytes, client: bytes, body: bytes = b"hi") -> list[bytes]:
    return [worker, b"", b"MDPW01", b"\x02", client, b"", body]


def to_client(client: bytes, body: bytes = b"ok", service: bytes = b"echo") -> list[bytes]:
    return [client, b"", b"MDPC01", service, body]


def test_request_reaches_an_idle_worker_and_its_reply_the_client() -> None:
    core = BrokerCore()
    assert ready(core, b"W") == []
    out = request(core, b"C")
    assert sent(out) == [to_worker(b"W", b"C")]
    assert out[0][0] is True  # on the worker socket
    out = reply(core, b"W", b"C")
    assert sent(out) == [to_client(b"C")]
    assert out[0][0] is False
    assert (core.stats.requests, core.stats.replies) == (1, 1)


def test_requests_wait_for_a_worker_and_are_handed_over_when_it_registers() -> None:
    core = BrokerCore()
    assert request(core, b"C1", body=b"1") == []
    assert request(core, b"C2", body=b"2") == []
    assert core.stats.queued == 2
    assert sent(ready(core, b"W")) == [to_worker(b"W", b"C1", b"1")]  # credit 1 at first
    assert sent(reply(core, b"W", b"C1")) == [to_client(b"C1"), to_worker(b"W", b"C2", b"2")]


def test_queued_request_expires_after_its_time_to_live() -> None:
    core = BrokerCore(BrokerSettings(request_ttl=10.0))
    request(core, b"C", now=0.0)
    core.tick(5.0)
    assert core.stats.expired_requests == 0
    core.tick(10.5)
    assert core.stats.expired_requests == 1
    assert ready(core, b"W", now=11.0) == []


def test_expired_request_is_not_handed_to_a_worker_arriving_before_the_next_tick() -> None:
    core = BrokerCore(BrokerSettings(request_ttl=10.0))
    request(core, b"C", now=0.0)
    assert ready(core, b"W", now=10.5) == []
    assert core.stats.expired_requests == 1


def test_quick_worker_earns_credit_up_to_the_prefetch_limit() -> None:
    core = BrokerCore(BrokerSettings(worker_prefetch=4, prefetch_wait=0.01))
    ready(core, b"W")
    request(core, b"C")
    reply(core, b"W", b"C", now=0.001)  # 1 ms per request: credit 1 + 10 ms / 1 ms, capped at 4
    for n in range(6):
        request(core, b"C", body=str(n).encode(), now=0.002)
    # Four went straight to the worker as they came; the other two waited in the queue...
    assert core.stats.queued == 2
    # ...and a reply makes room for one more.
    out = reply(core, b"W", b"C", now=0.002)
    assert sent(out) == [to_client(b"C"), to_worker(b"W", b"C", b"4")]


def test_slow_worker_is_given_one_request_at_a_time() -> None:
    core = BrokerCore(BrokerSettings(worker_prefetch=8, prefetch_wait=0.005))
    ready(core, b"W")
    request(core, b"C", body=b"0")
    assert sent(request(core, b"C", body=b"1")) == []  # queued: the worker holds one
    out = reply(core, b"W", b"C", now=1.0)  # a second per request
    assert sent(out) == [to_client(b"C"), to_worker(b"W", b"C", b"1")]
    assert sent(request(core, b"C", body=b"2", now=1.0)) == []


def test_requests_go_to_the_least_recently_used_idle_worker() -> None:
    core = BrokerCore()
    ready(core, b"W1")
    ready(core, b"W2")
    assert sent(request(core, b"C", body=b"a")) == [to_worker(b"W1", b"C", b"a")]
    assert sent(request(core, b"C", body=b"b")) == [to_worker(b"W2", b"C", b"b")]
    reply(core, b"W1", b"C")
    assert sent(request(core, b"C", body=b"c")) == [to_worker(b"W1", b"C", b"c")]


def test_tick_heartbeats_every_worker_in_its_own_dialect() -> None:
    core = BrokerCore()
    ready(core, b"W1")
    core.receive([b"W2", b"MDPW02", b"\x01", b"echo"], SHARED, 0.0)
    out = core.tick(1.0)
    assert sent(out) == [[b"W1", *HEARTBEAT_01], [b"W2", b"MDPW02", b"\x05"]]
    assert all(to_worker_socket for to_worker_socket, _, _ in out)


def test_silent_idle_worker_expires_after_its_liveness() -> None:
    settings = BrokerSettings(heartbeat_interval=1.0, heartbeat_liveness=3)
    core = BrokerCore(settings)
    ready(core, b"W", now=0.0)
    core.receive([b"W", *HEARTBEAT_01], SHARED, 2.0)  # any command counts as a sign of life
    core.tick(4.5)
    assert core.has_workers(b"echo")
    core.tick(5.5)
    assert not core.has_workers(b"echo")
    assert core.stats.workers_expired == 1
    assert sent(request(core, b"C", now=5.5)) == []  # queued, not sent to the dead worker


def test_busy_worker_is_given_the_busy_timeout_before_it_expires() -> None:
    core = BrokerCore(BrokerSettings(heartbeat_interval=1.0, heartbeat_liveness=3,
                                     busy_worker_timeout=60.0))
    ready(core, b"W")
    request(core, b"C")
    core.tick(30.0)
    assert core.has_workers(b"echo")
    core.tick(61.0)
    assert not core.has_workers(b"echo")
    assert core.stats.abandoned_requests == 1


def test_full_service_queue_answers_503_and_counts() -> None:
    core = BrokerCore(BrokerSettings(queue_limit=2))
    assert request(core, b"C") == request(core, b"C") == []
    assert sent(request(core, b"C")) == [[
        b"C", b"", b"MDPC01", b"echo", b"503",
        b"the broker's queue for this service is full (limit 2): retry later"]]
    assert (core.stats.queued, core.stats.rejected_requests) == (2, 1)


def test_full_broker_queue_answers_503_across_services() -> None:
    core = BrokerCore(BrokerSettings(total_queue_limit=2))
    request(core, b"C", b"a")
    request(core, b"C", b"b")
    [(_, frames, _)] = request(core, b"C", b"c")
    assert frames[4:] == [b"503", b"the broker's queues are full (limit 2 in all): retry later"]
    assert (core.stats.queued, core.stats.rejected_requests) == (2, 1)


#: What two queued requests of `request()`'s default body cost a client (titanic.broker.queues).
TWO_QUEUED = 2 * queued_cost(b"echo", [b"hi"])


def test_client_with_too_many_bytes_queued_gets_503() -> None:
    core = BrokerCore(BrokerSettings(max_queued_bytes_per_client=TWO_QUEUED))
    request(core, b"C")
    request(core, b"C")
    [(_, frames, _)] = request(core, b"C")
    assert frames[:5] == [b"C", b"", b"MDPC01", b"echo", b"503"]
    assert frames[5].startswith(b"this client has")
    assert request(core, b"other") == []  # the limit is per client
    assert core.stats.over_client_limit == 1


def test_the_client_limit_counts_bytes_so_many_small_requests_queue() -> None:
    core = BrokerCore()
    assert all(request(core, b"C") == [] for _ in range(10_000))
    assert core.stats.queued == 10_000 and core.stats.over_client_limit == 0
    big = b"x" * (8 * 1024 * 1024)
    refused = [out for out in (request(core, b"D", body=big) for _ in range(10)) if out]
    assert len(refused) == 3  # 7 requests of 8 MiB fit in 64 MiB, with their costs
    assert core.stats.over_client_limit == 3


def test_one_request_is_queued_whatever_its_size() -> None:
    core = BrokerCore(BrokerSettings(max_queued_bytes_per_client=10))
    assert request(core, b"C", body=b"x" * 100) == []
    assert sent(request(core, b"C"))[0][4] == b"503"


def test_the_client_limit_is_given_back_as_requests_leave_the_queue() -> None:
    core = BrokerCore(BrokerSettings(max_queued_bytes_per_client=TWO_QUEUED, request_ttl=5))
    request(core, b"C")
    request(core, b"C", now=1.0)
    core.tick(5.5)  # the first expired
    assert request(core, b"C", now=5.5) == []
    ready(core, b"W", now=5.6)  # takes one: room for one again
    assert request(core, b"C", now=5.7) == []
    assert sent(request(core, b"C", now=5.8))[0][4] == b"503"
    core.audit()
    assert core.book.total == 2 and core.book.waiting(b"C") == TWO_QUEUED


def test_connections_of_one_curve_key_share_its_queue_limit() -> None:
    core = BrokerCore(BrokerSettings(max_queued_bytes_per_client=2 * queued_cost(b"echo",
                                                                                [b"x"])))
    for connection in (b"C1", b"C2"):
        assert core.receive([connection, b"", b"MDPC01", b"echo", b"x"], SHARED, 0.0,
                            b"alice-key") == []
    [(_, frames, _)] = core.receive([b"C3", b"", b"MDPC01", b"echo", b"x"], SHARED, 0.0,
                                    b"alice-key")
    assert frames[4] == b"503"
    assert frames[5].startswith(b"this key has ")
    assert core.receive([b"C4", b"", b"MDPC01", b"echo", b"x"], SHARED, 0.0, b"bob-key") == []
    ready(core, b"W")  # one leaves the queue: alice has room for one again
    assert core.receive([b"C3", b"", b"MDPC01", b"echo", b"x"], SHARED, 0.0, b"alice-key") == []


def test_oversized_request_gets_413_in_the_client_dialect() -> None:
    core = BrokerCore(BrokerSettings(max_request_size=10))
    ready(core, b"W")
    [(_, frames, _)] = core.receive([b"C", b"MDPC02", b"\x01", b"echo", b"x" * 6, b"y" * 6],
                                    SHARED, 0.0)
    assert frames[:5] == [b"C", b"MDPC02", b"\x03", b"echo", b"413"]
    assert frames[5].startswith(b"request of 16 bytes exceeds")
    assert core.stats.oversized_requests == 1


@pytest.mark.parametrize("dialect", ["7/MDP", "18/MDP"])
def test_a_titanic_client_gets_its_refusals_under_an_empty_service_name(dialect: str) -> None:
    core = BrokerCore(BrokerSettings(queue_limit=0))
    client = marked_routing_id()
    message = ([client, b"", b"MDPC01", b"echo", b"x"] if dialect == "7/MDP"
               else [client, b"MDPC02", b"\x01", b"echo", b"x"])
    [(_, frames, _)] = core.receive(message, SHARED, 0.0)
    assert frames[3] == b""  # no worker's reply is ever under an empty name
    assert frames[4] == b"503"


def test_a_marked_client_gets_worker_replies_under_the_service_name() -> None:
    core = BrokerCore()
    ready(core, b"W")
    client = marked_routing_id()
    request(core, client)
    assert sent(reply(core, b"W", client)) == [to_client(client)]


@pytest.mark.parametrize("message", [
    [b"C", b"", b"MDPC01", b"", b"body"],
    [b"C", b"", b"MDPC01", b""],
    [b"C", b"MDPC02", b"\x01", b""],
])
def test_a_request_without_a_service_name_is_answered_400(message: list[bytes]) -> None:
    core = BrokerCore()
    [(_, frames, _)] = core.receive(message, SHARED, 0.0)
    assert frames[0] == b"C" and frames[-2:] == [b"400", b"the request names no service"]
    assert core.stats.malformed == 1


@pytest.mark.parametrize(("service", "body", "code"), [
    (b"mmi.service", b"echo", b"200"),
    (b"mmi.service", b"nobody", b"404"),
    (b"mmi.other", b"echo", b"501"),
])
def test_mmi_answers_from_the_registered_workers(service: bytes, body: bytes,
                                                 code: bytes) -> None:
    core = BrokerCore()
    ready(core, b"W")
    assert sent(request(core, b"C", service, body)) == [to_client(b"C", code, service)]


def test_partials_reach_an_18_mdp_client_as_they_come_and_a_7_mdp_client_at_once() -> None:
    core = BrokerCore()
    core.receive([b"W", b"MDPW02", b"\x01", b"stream"], SHARED, 0.0)
    core.receive([b"C2", b"MDPC02", b"\x01", b"stream", b"q"], SHARED, 0.0)
    out = core.receive([b"W", b"MDPW02", b"\x03", b"C2", b"", b"p1"], SHARED, 0.0)
    assert sent(out) == [[b"C2", b"MDPC02", b"\x02", b"stream", b"p1"]]
    out = core.receive([b"W", b"MDPW02", b"\x04", b"C2", b"", b"f"], SHARED, 0.0)
    assert sent(out) == [[b"C2", b"MDPC02", b"\x03", b"stream", b"f"]]
    request(core, b"C1", b"stream")
    assert core.receive([b"W", b"MDPW02", b"\x03", b"C1", b"", b"p1"], SHARED, 0.0) == []
    out = core.receive([b"W", b"MDPW02", b"\x04", b"C1", b"", b"f"], SHARED, 0.0)
    assert sent(out) == [[b"C1", b"", b"MDPC01", b"stream", b"p1", b"f"]]


@pytest.mark.parametrize(("first", "then"), [
    (None, [*REPLY_01, b"C", b"", b"x"]),                     # REPLY before READY
    ([*READY_01, b"svc"], [*READY_01, b"svc"]),               # second READY
    (None, [*READY_01, b"mmi.service"]),                      # READY for mmi.*
    ([*READY_01, b"svc"], [*REPLY_01, b"who", b"", b"x"]),    # a reply nobody asked for
])
def test_protocol_violations_get_disconnect(first: list[bytes] | None,
                                            then: list[bytes]) -> None:
    core = BrokerCore()
    if first is not None:
        core.receive([b"W", *first], SHARED, 0.0)
    assert sent(core.receive([b"W", *then], SHARED, 0.0)) == [[b"W", *DISCONNECT_01]]
    assert core.stats.workers_disconnected == 1
    assert not core.has_workers(b"svc")


def test_violation_gets_disconnect_in_the_peer_dialect() -> None:
    core = BrokerCore()
    out = core.receive([b"W", b"MDPW02", b"\x04", b"C", b"", b"x"], SHARED, 0.0)
    assert sent(out) == [[b"W", *DISCONNECT_02]]


@pytest.mark.parametrize("frames", [
    [], [b""], [b"", b"MDPC01"], [b"junk"], [b"", b"MDPW01", b"\x09"],
    [b"MDPC02", b"\x02", b"svc"], [b"", b"MDPW01", b"\x01"],
])
def test_malformed_messages_are_dropped_and_counted(frames: list[bytes]) -> None:
    core = BrokerCore()
    assert core.receive([b"P", *frames], SHARED, 0.0) == []
    assert core.stats.malformed == 1


def test_separate_endpoints_refuse_peers_on_the_wrong_one() -> None:
    core = BrokerCore()
    out = core.receive([b"W", *READY_01, b"echo"], Endpoint.CLIENTS, 0.0)
    assert out == [(False, [b"W", *DISCONNECT_01], None)]  # answered on the client socket
    assert core.receive([b"C", b"", b"MDPC01", b"echo", b"x"], Endpoint.WORKERS, 0.0) == []
    assert core.stats.workers_on_client_endpoint == 1
    assert core.stats.clients_on_worker_endpoint == 1
    assert not core.has_workers(b"echo")


def test_undeliverable_request_goes_to_another_worker_and_the_first_is_removed() -> None:
    core = BrokerCore()
    ready(core, b"W1")
    ready(core, b"W2")
    failed = request(core, b"C")
    assert sent(failed) == [to_worker(b"W1", b"C")]
    out = core.undeliverable(failed, 0.0)
    assert sent(out) == [to_worker(b"W2", b"C")]
    assert core.stats.abandoned_requests == 0  # it never reached W1
    assert sent(reply(core, b"W1", b"C")) == [[b"W1", *DISCONNECT_01]]  # W1 is gone
    assert sent(reply(core, b"W2", b"C")) == [to_client(b"C")]


def test_undeliverable_requests_go_back_in_front_of_the_queue_in_order() -> None:
    core = BrokerCore(BrokerSettings(worker_prefetch=4, prefetch_wait=1.0))
    ready(core, b"W1")
    request(core, b"C", body=b"warm")
    reply(core, b"W1", b"C", now=0.001)  # quick: credit 4
    request(core, b"C", body=b"1")
    request(core, b"C", body=b"2")
    failed = request(core, b"C", body=b"3") + request(core, b"C", body=b"4")
    assert core.undeliverable(failed, 0.0) == []  # no other worker: both wait
    out = ready(core, b"W2")
    assert sent(out) == [to_worker(b"W2", b"C", b"3")]
    assert sent(reply(core, b"W2", b"C")) == [to_client(b"C"), to_worker(b"W2", b"C", b"4")]


def test_stopping_disconnects_every_worker() -> None:
    core = BrokerCore()
    ready(core, b"W1")
    core.receive([b"W2", b"MDPW02", b"\x01", b"echo"], SHARED, 0.0)
    assert sent(core.disconnect_all()) == [[b"W1", *DISCONNECT_01], [b"W2", *DISCONNECT_02]]


def test_mmi_broker_tells_the_workers_and_queue_of_every_service() -> None:
    core = BrokerCore()
    ready(core, b"W")
    request(core, b"C", b"idle")
    [(_, frames, _)] = request(core, b"C", b"mmi.broker")
    assert frames[:5] == [b"C", b"", b"MDPC01", b"mmi.broker", b"200"]
    assert json.loads(frames[5]) == {"workers": 1, "services": {
        "echo": {"workers": 1, "queued": 0}, "idle": {"workers": 0, "queued": 1}}}


def test_an_admin_worker_asking_for_identities_is_told_each_caller() -> None:
    core = BrokerCore()
    core.admins = frozenset({b"A" * 40})
    core.receive([b"W", *READY_01, b"echo", b"titanic:identity/1"], SHARED, 0.0, b"A" * 40)
    out = core.receive([b"C", b"", b"MDPC01", b"echo", b"hi"], SHARED, 0.0, b"K" * 40)
    assert sent(out) == [[b"W", b"", b"MDPW01", b"\x02", b"C", b"client " + b"K" * 40, b"",
                          b"hi"]]
    # Undelivered, the request waits with its own body: the caller frame is not part of it.
    assert core.undeliverable(out, 0.0) == []
    assert sent(ready(core, b"W2")) == [to_worker(b"W2", b"C")]


def test_a_worker_without_an_admin_key_asking_for_identities_is_disconnected() -> None:
    core = BrokerCore()
    out = core.receive([b"W", *READY_01, b"echo", b"titanic:identity/1"], SHARED, 0.0,
                       b"K" * 40)
    assert sent(out) == [[b"W", *DISCONNECT_01, b"titanic:identity/1 refused"]]
    assert core.stats.identities_refused == 1 and not core.has_workers(b"echo")


def test_a_busy_worker_whose_connection_closed_is_removed_at_once_and_told_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="titanic.broker")
    core = BrokerCore(BrokerSettings(heartbeat_interval=1.0, busy_worker_timeout=300.0))
    ready(core, b"W")
    request(core, b"C")  # in W's hands when W dies
    heartbeat = core.tick(1.0)
    assert sent(heartbeat) == [[b"W", *HEARTBEAT_01]]
    core.stats.unroutable += 1  # the driver could not route it: W's connection is gone
    assert core.undeliverable([], 1.0, gone=[b"W"]) == []
    assert not core.has_workers(b"echo")
    assert (core.stats.workers_gone, core.stats.abandoned_requests) == (1, 1)
    for now in (2.0, 3.0, 4.0):
        assert sent(core.tick(now)) == []  # no more heartbeats to it
    lines = [(r.levelname, r.getMessage()) for r in caplog.records
             if "registered" not in r.getMessage()]
    assert lines == [("WARNING", "worker 57 for 'echo' removed with 1 request(s) in hand "
                                 "(its connection closed): their clients must retry")]
    assert core.stats.unroutable == 1  # still counted, not reported again


def test_a_request_to_a_worker_found_gone_goes_to_another_in_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="titanic.broker")
    core = BrokerCore()
    ready(core, b"W1")
    ready(core, b"W2")
    failed = request(core, b"C")
    core.stats.unroutable += 1
    assert sent(core.undeliverable(failed, 0.0, gone=[b"W1"])) == [to_worker(b"W2", b"C")]
    core.tick(10.0)
    assert [r.getMessage() for r in caplog.records if "registered" not in r.getMessage()] == [
        "worker 5731 for 'echo' removed: its connection closed"]
    assert (core.stats.workers_gone, core.stats.abandoned_requests) == (1, 0)


def test_a_reply_to_a_client_that_is_gone_is_still_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="titanic.broker")
    core = BrokerCore(BrokerSettings(heartbeat_interval=1.0))
    core.stats.unroutable += 1
    core.undeliverable([], 0.0, gone=[b"C"])  # not a worker: nothing removed, nothing told
    core.tick(1.0)
    assert [r.getMessage() for r in caplog.records] == ["in the last 1.0 s: 1 unroutable"]


def test_a_marked_client_hears_at_once_that_the_worker_holding_its_request_is_gone() -> None:
    core = BrokerCore(BrokerSettings(heartbeat_interval=1.0))
    ready(core, b"W")
    client = marked_routing_id()
    request(core, client)
    assert core.gave_requests
    out, busy = core.probe(0.2)
    assert busy and sent(out) == [[b"W", *HEARTBEAT_01]]
    assert core.probe(0.25)[0] == []  # probed at most every PROBE_S
    gone = core.undeliverable(out, 0.2, gone=[b"W"])  # the probe could not be routed
    assert sent(gone) == [[client, b"", b"MDPC01", b"", b"503",
                           b"the worker that had this request is gone: send it again"]]
    assert not core.has_workers(b"echo") and core.probe(0.5) == ([], False)


def test_a_plain_client_is_not_sent_the_worker_gone_notice() -> None:
    core = BrokerCore(BrokerSettings(heartbeat_interval=1.0))
    ready(core, b"W")
    request(core, b"C")
    out, _ = core.probe(0.2)
    assert core.undeliverable(out, 0.2, gone=[b"W"]) == []  # it cannot tell it from a reply
    assert core.stats.abandoned_requests == 1
