"""The broker core's services of its own host: kept aside, answered by the host, and the host's
own requests routed like a client's without a socket."""

from __future__ import annotations

from titanic.broker.core import BrokerCore, Endpoint, Outgoing
from titanic.protocol.refusal import Refusal
from titanic.settings import BrokerSettings

SHARED = Endpoint.SHARED
LOCAL = frozenset({b"titanic.request"})


def sent(out: list[Outgoing]) -> list[list[bytes]]:
    return [frames for _, frames, _ in out]


def ready(core: BrokerCore, worker: bytes, service: bytes = b"echo") -> list[Outgoing]:
    return core.receive([worker, b"", b"MDPW01", b"\x01", service], SHARED, 0.0)


def test_a_request_for_a_local_service_is_kept_for_the_host_not_routed() -> None:
    core = BrokerCore(local_services=LOCAL)
    ready(core, b"W", b"titanic.request")  # even a worker registered for it gets nothing
    out = core.receive([b"C", b"", b"MDPC01", b"titanic.request", b"echo", b"hi"], SHARED, 1.0)
    assert out == []
    requests, replies = core.take_local()
    assert [(r.client, r.service, r.body) for r in requests] == [
        (b"C", b"titanic.request", [b"echo", b"hi"])]
    assert replies == []
    assert core.take_local() == ([], [])  # taken once


def test_the_hosts_answer_reaches_the_client_in_the_dialect_it_spoke() -> None:
    core = BrokerCore(local_services=LOCAL)
    core.receive([b"A", b"", b"MDPC01", b"titanic.request", b"x"], SHARED, 0.0)
    core.receive([b"B", b"MDPC02", b"\x01", b"titanic.request", b"x"], SHARED, 0.0)
    first, second = core.take_local()[0]
    assert sent(core.answer_local(first, [b"200", b"id"])) == [
        [b"A", b"", b"MDPC01", b"titanic.request", b"200", b"id"]]
    assert sent(core.answer_local(second, [b"200", b"id"])) == [
        [b"B", b"MDPC02", b"\x03", b"titanic.request", b"200", b"id"]]


def test_mmi_says_a_local_service_is_served() -> None:
    core = BrokerCore(local_services=LOCAL)
    out = core.receive([b"C", b"", b"MDPC01", b"mmi.service", b"titanic.request"], SHARED, 0.0)
    assert sent(out) == [[b"C", b"", b"MDPC01", b"mmi.service", b"200"]]
    assert core.has_workers(b"titanic.request")
    assert not core.has_workers(b"echo")


def test_the_hosts_request_goes_to_a_worker_and_its_reply_comes_back_to_the_host() -> None:
    core = BrokerCore(local_services=LOCAL)
    ready(core, b"W")
    address, out = core.request_local(b"echo", [b"hi"], 0.0)
    assert sent(out) == [[b"W", b"", b"MDPW01", b"\x02", address, b"", b"hi"]]
    assert not address.startswith(b"W") and len(address) != 5  # no peer's address
    out = core.receive([b"W", b"", b"MDPW01", b"\x03", address, b"", b"ok"], SHARED, 0.1)
    assert out == []  # nothing for a socket
    assert core.take_local() == ([], [(address, [b"ok"])])


def test_each_request_of_the_host_has_an_address_of_its_own() -> None:
    core = BrokerCore()
    first, _ = core.request_local(b"echo", [b"1"], 0.0)
    second, _ = core.request_local(b"echo", [b"2"], 0.0)
    assert first != second


def test_the_host_asks_mmi_and_gets_the_answer_as_a_reply() -> None:
    core = BrokerCore()
    address, out = core.request_local(b"mmi.service", [b"echo"], 0.0)
    assert out == []
    assert core.take_local() == ([], [(address, [b"404"])])


def test_a_request_of_the_host_refused_by_a_full_queue_comes_back_as_a_refusal() -> None:
    core = BrokerCore(BrokerSettings(queue_limit=1))
    core.request_local(b"echo", [b"1"], 0.0)  # queued: no worker yet
    second, out = core.request_local(b"echo", [b"2"], 0.0)
    assert out == []
    assert core.take_local() == ([], [(second, Refusal(
        503, "the broker's queue for this service is full (limit 1): retry later"))])
    assert core.stats.rejected_requests == 1


def test_a_timed_out_request_of_the_host_is_taken_out_of_the_queue() -> None:
    core = BrokerCore()
    first, _ = core.request_local(b"echo", [b"1"], 0.0)
    second, _ = core.request_local(b"echo", [b"2"], 0.0)
    assert core.cancel_local(first, b"echo")
    assert not core.cancel_local(first, b"echo")  # gone already
    assert not core.cancel_local(first, b"nobody")
    out = ready(core, b"W")
    assert sent(out) == [[b"W", b"", b"MDPW01", b"\x02", second, b"", b"2"]]
    assert core.service_counts()["echo"] == (1, 0)
