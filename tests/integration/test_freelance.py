"""Freelance (10/FLP), brokerless: clients calling several servers directly, on real sockets.

Servers run as threads (FreelanceServer) or as `titanic worker echo --bind` processes, which
the failover tests SIGKILL in the middle of a run.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from contextlib import ExitStack

import pytest
import zmq
from titanic_support import Processes, free_endpoint, recv_within, running, wait_until

from titanic import (
    AsyncFreelanceClient,
    ClientClosedError,
    FreelanceClient,
    FreelanceServer,
    FreelanceTimeoutError,
    ServiceRefusedError,
)
from titanic.client.flp_session import Completion
from titanic.protocol import flp
from titanic.protocol.failure import parse_failure
from titanic.worker import echo_handler
from titanic.worker.mdp import Handler


def _client(endpoints: str | list[str], timeout: float = 2.5) -> FreelanceClient:
    """A client with quick liveness: a ping every 0.05 s, dead after 0.5 s of silence (a busy
    machine can hold a live server's PONGs back for a fraction of that)."""
    return FreelanceClient(endpoints, timeout=timeout, ping_interval=0.05, liveness=10,
                           attempt_timeout=0.5)


def _servers(stack: ExitStack, count: int, **handlers: Handler) -> list[FreelanceServer]:
    servers = []
    for _ in range(count):
        server = FreelanceServer(free_endpoint(), handlers or {"echo": echo_handler})
        server.bind()
        stack.enter_context(running(server))
        servers.append(server)
    return servers


def _echo_process(procs: Processes, endpoint: str, name: str) -> subprocess.Popen[bytes]:
    return procs.cli(name, "worker", "echo", "--bind", endpoint)


def _alive_now(client: FreelanceClient) -> list[str]:
    client.poll(0.05)  # pings and their answers
    return client.alive()


def _wait_alive(client: FreelanceClient, endpoints: list[str], timeout: float = 20) -> None:
    wait_until(lambda: _alive_now(client) == endpoints, timeout,
               message=f"servers {endpoints} alive")


def test_requests_are_answered_and_spread_over_the_servers() -> None:
    with ExitStack() as stack:
        servers = _servers(stack, 2)
        with _client([s.identity for s in servers]) as client:
            completions = list(client.map([("echo", [b"%d" % n]) for n in range(400)], depth=32))
    assert sorted(c.tag for c in completions) == list(range(400))  # type: ignore[type-var]
    assert all(c.error is None and c.reply == [b"%d" % c.tag] for c in completions)  # type: ignore[str-bytes-safe]
    assert all(server.requests_handled > 0 for server in servers)


def test_unknown_service_is_refused_with_404_by_every_server() -> None:
    with ExitStack() as stack:
        servers = _servers(stack, 2)
        with _client([s.identity for s in servers]) as client:
            with pytest.raises(ServiceRefusedError) as caught:
                client.request("nope", b"x")
            assert client.request("echo", b"still") == [b"still"]
    assert caught.value.code == 404
    assert sum(server.requests_refused for server in servers) == 2


def test_service_found_at_the_one_server_that_has_it() -> None:
    with ExitStack() as stack:
        plain = _servers(stack, 1)
        other = _servers(stack, 1, upper=lambda frames: [f.upper() for f in frames])
        endpoints = [plain[0].identity, other[0].identity]
        with _client(endpoints) as client:
            replies = [client.request("upper", b"abc") for _ in range(10)]
    assert replies == [[b"ABC"]] * 10


def test_handler_failure_comes_back_as_a_failure_report() -> None:
    def broken(frames: list[bytes]) -> list[bytes]:
        raise ValueError("bad input")

    with ExitStack() as stack:
        [server] = _servers(stack, 1, broken=broken)
        with _client(server.identity) as client:
            reply = client.request("broken", b"x")
    report = parse_failure(reply)
    assert report is not None and report.error == "ValueError: bad input"
    assert server.requests_failed == 1


def test_malformed_frames_are_dropped_and_counted_and_the_server_goes_on() -> None:
    with ExitStack() as stack:
        [server] = _servers(stack, 1)
        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(server.identity)
        try:
            for junk in ([b"junk"], [b"abc", b"echo"], [b""], [b"PING", b"extra"]):
                sock.send_multipart(junk)
            sock.send_multipart([b"9"])  # a sequence but no service: answered 400
            assert recv_within(sock) == [b"9", flp.MALFORMED,
                                         b"a request names a service in its second frame"]
            sock.send_multipart([b"10", b"echo", b"ok"])
            assert recv_within(sock) == [b"10", flp.OK, b"ok"]
            sock.send_multipart([flp.PING])
            assert recv_within(sock) == [flp.PONG]
        finally:
            sock.close(0)
    assert server.dropped == 4 and server.requests_refused == 1


def test_no_live_server_times_out_with_a_clear_error() -> None:
    endpoints = [free_endpoint(), free_endpoint()]
    with _client(endpoints, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(FreelanceTimeoutError) as caught:
            client.request("echo", b"x")
        waited = time.monotonic() - started
    assert "no server answered a PING" in str(caught.value)
    assert endpoints[0] in str(caught.value)
    assert waited < 5  # bounded by the timeout, not hanging


def test_request_waits_for_a_server_that_starts_late() -> None:
    endpoint = free_endpoint()
    with ExitStack() as stack, _client(endpoint, timeout=10) as client:
        client.send("echo", [b"early"], tag="early")
        assert client.poll(0.2) == []
        server = FreelanceServer(endpoint, {"echo": echo_handler})
        server.bind()
        stack.enter_context(running(server))
        [done] = client.poll(5)
    assert (done.tag, done.reply, done.server) == ("early", [b"early"], endpoint)


def test_async_client_runs_many_requests_at_once() -> None:
    with ExitStack() as stack:
        servers = _servers(stack, 2)

        async def main() -> list[list[bytes]]:
            async with AsyncFreelanceClient([s.identity for s in servers],
                                            ping_interval=0.05, attempt_timeout=0.5) as client:
                replies = await asyncio.gather(*(client.request("echo", b"%d" % n)
                                                 for n in range(200)))
                with pytest.raises(ServiceRefusedError):
                    await client.request("nope")
                return replies

        replies = asyncio.run(main())
    assert replies == [[b"%d" % n] for n in range(200)]


def test_server_killed_mid_run_loses_no_request(procs: Processes) -> None:
    endpoints = [free_endpoint() for _ in range(3)]
    victim, *_ = [_echo_process(procs, endpoint, f"server-{n}")
                  for n, endpoint in enumerate(endpoints)]
    total = 3000
    with _client(endpoints, timeout=10) as client:
        _wait_alive(client, endpoints)
        answered: dict[int, list[bytes] | None] = {}
        by_server: dict[str | None, int] = {}
        for completion in client.map([("echo", [b"%d" % n]) for n in range(total)], depth=32):
            assert completion.error is None, completion.error
            answered[completion.tag] = completion.reply  # type: ignore[index]
            by_server[completion.server] = by_server.get(completion.server, 0) + 1
            if len(answered) == total // 3:
                Processes.kill(victim)
        wait_until(lambda: _alive_now(client) == endpoints[1:], 10,
                   message="the killed server taken for dead, the others alive")
        assert client.resent > 0  # the kill caught requests in flight at the victim
    assert answered == {n: [b"%d" % n] for n in range(total)}
    assert by_server.get(endpoints[0], 0) < total // 2
    assert by_server[endpoints[1]] > 0 and by_server[endpoints[2]] > 0


def test_server_that_comes_back_is_used_again(procs: Processes) -> None:
    endpoints = [free_endpoint(), free_endpoint()]
    first = _echo_process(procs, endpoints[0], "first")
    _echo_process(procs, endpoints[1], "second")
    with _client(endpoints, timeout=10) as client:
        _wait_alive(client, endpoints)
        Processes.kill(first)
        wait_until(lambda: _alive_now(client) == endpoints[1:], 10,
                   message="the killed server taken for dead")
        assert all(c.server == endpoints[1] for c in client.map([("echo", [b"x"])] * 50))
        _echo_process(procs, endpoints[0], "first-again")
        _wait_alive(client, endpoints)
        servers = {c.server for c in client.map([("echo", [b"y"])] * 100)}
    assert servers == set(endpoints)


def test_handler_threads_serve_requests_at_once_and_pings_meanwhile() -> None:
    both_in = threading.Barrier(2, timeout=10)

    def meet(frames: list[bytes]) -> list[bytes]:
        both_in.wait()  # returns only when two requests are in hand at once
        return [b"met", *frames]

    with ExitStack() as stack:
        server = FreelanceServer(free_endpoint(), {"meet": meet}, concurrency=2)
        server.bind()
        stack.enter_context(running(server))
        with FreelanceClient(server.identity, timeout=10, ping_interval=0.05,
                             attempt_timeout=10) as client:
            client.send("meet", [b"a"], tag="a")
            early: list[Completion] = []
            wait_until(lambda: not early.extend(client.poll(0.3))
                       and server.requests_handled == 0 and len(client.alive()) == 1, 5,
                       message="PINGs answered while a handler waits")
            client.send("meet", [b"b"], tag="b")
            done = {c.tag: c.reply for c in early + client.poll(5) + client.poll(5)}
    assert done == {"a": [b"met", b"a"], "b": [b"met", b"b"]}
    assert server.requests_handled == 2


def test_async_close_ends_waiting_requests_with_client_closed() -> None:
    async def main() -> BaseException | None:
        client = AsyncFreelanceClient(free_endpoint(), timeout=30)
        waiting = asyncio.create_task(client.request("echo", b"x"))
        await asyncio.sleep(0.1)  # the request is in flight, no server answers
        await client.close()
        try:
            await asyncio.wait_for(waiting, 5)
        except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
            return exc
        return None

    assert isinstance(asyncio.run(main()), ClientClosedError)
