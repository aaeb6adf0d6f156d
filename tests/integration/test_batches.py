"""Batches from outside: submit_many and `titanic submit-many` against titanic's server on
SQLite and PostgreSQL (order, keys, all or nothing, messages split to fit), and against a
standard 9/TSP server, which is sent the requests one by one."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from dataclasses import replace

import pytest
from standard_tsp import StandardTitanic
from titanic_support import (
    fast_dispatcher,
    raw_dealer,
    recv_within,
    run_cli,
    running,
    start_broker,
    start_worker,
)

from titanic.client.aio import AsyncTitanicClient
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.dispatch.hosted import HostedDispatcher
from titanic.dispatch.standalone import Dispatcher
from titanic.errors import RequestTooLargeError, TitanicServiceError
from titanic.protocol import tsp
from titanic.store import RequestStatus, SqlStore, open_store

SETTINGS = fast_dispatcher(request_timeout=5.0)


def titanic_at(stack: ExitStack, db_url: str, *, hosted: bool = True,
               **options: int) -> tuple[str, SqlStore]:
    """A broker with the dispatcher in it (or beside it), on a store at `db_url`: its endpoint
    and the store."""
    store = open_store(db_url, **options)  # type: ignore[arg-type]
    stack.callback(store.close_store)
    if hosted:
        return start_broker(stack, host=HostedDispatcher(store, SETTINGS)).bound[0], store
    endpoint = start_broker(stack).bound[0]
    stack.enter_context(running(Dispatcher(store, replace(SETTINGS, broker=[endpoint]))))
    return endpoint, store


def stored_bodies(store: SqlStore, ids: list[str]) -> list[tuple[bytes, ...]]:
    found = [store.get(request_id) for request_id in ids]
    assert all(request is not None for request in found)
    return [request.request for request in found if request is not None]


@pytest.mark.parametrize("hosted", [True, False], ids=["in the broker", "own dispatcher"])
def test_submit_many_stores_every_request_in_order_and_each_is_answered(
        db_url: str, stack: ExitStack, hosted: bool) -> None:
    endpoint, store = titanic_at(stack, db_url, hosted=hosted)
    start_worker(stack, endpoint, "echo")
    bodies: list[bytes | str | list[bytes]] = [b"line %d" % n for n in range(200)]
    bodies[7] = "text, sent as UTF-8 \u00e9"
    bodies[8] = [b"two", b"frames"]
    with TitanicClient(endpoint, timeout=5.0) as client:
        ids = client.submit_many("echo", bodies)
        assert len(set(ids)) == 200
        expected = [(b"line %d" % n,) for n in range(200)]
        expected[7] = ("text, sent as UTF-8 \u00e9".encode(),)
        expected[8] = (b"two", b"frames")
        assert stored_bodies(store, ids) == expected
        for request_id, body in zip(ids[::40], expected[::40], strict=True):
            fetched = client.wait(request_id, 20)
            assert fetched.state is ReplyState.DONE
            assert tuple(fetched.reply) == body


def test_each_request_of_a_batch_keeps_its_own_key(db_url: str, stack: ExitStack) -> None:
    endpoint, store = titanic_at(stack, db_url)
    with TitanicClient(endpoint, timeout=5.0) as client:
        earlier = client.submit("billing", b"order 1", key="order-1")
        ids = client.submit_many("billing", [b"order 1 again", b"order 2", b"order 3",
                                             b"order 2 again"],
                                 keys=["order-1", "order-2", None, "order-2"])
        assert ids[0] == earlier, "a key already stored answers its request"
        assert ids[3] == ids[1], "a key repeated within the batch is stored once"
        assert len({earlier, ids[1], ids[2]}) == 3
        again = client.submit_many("billing", [b"x", b"y"], keys=["order-2", "order-4"])
        assert again[0] == ids[1]
    assert stored_bodies(store, [earlier, ids[1], ids[2], again[1]]) == [
        (b"order 1",), (b"order 2",), (b"order 3",), (b"y",)]
    assert sum(store.stats().counts.values()) == 4


def test_a_batch_with_one_malformed_request_stores_none(db_url: str, stack: ExitStack) -> None:
    endpoint, store = titanic_at(stack, db_url)
    good = tsp.build_batch(b"echo", [tsp.BatchItem((b"a",)), tsp.BatchItem((b"b",), "k")])
    with raw_dealer(endpoint) as sock:
        # The second head announces more frames than the message holds.
        sock.send_multipart([b"", b"MDPC01", tsp.REQUEST_SERVICE, *good[:-1], b"1 k2",
                             b"c", b"5"])
        answer = recv_within(sock, 10)
        assert answer[3:4] == [b"400"]
        assert b"batch request 3" in answer[4]
        sock.send_multipart([b"", b"MDPC01", tsp.REQUEST_SERVICE, *good])
        answer = recv_within(sock, 10)
    assert answer[3] == b"200" and len(answer) == 6, "200 and one UUID per request"
    assert sum(store.stats().counts.values()) == 2, "nothing of the refused batch was stored"


def test_a_batch_over_the_size_limit_goes_in_several_messages(db_url: str,
                                                             stack: ExitStack) -> None:
    endpoint, store = titanic_at(stack, db_url, max_request_bytes=1000)
    bodies = [b"%03d" % n + b"." * 97 for n in range(45)]  # 4,500 bytes: 5 messages at least
    with TitanicClient(endpoint, timeout=5.0) as client:
        ids = client.submit_many("echo", bodies)
        assert stored_bodies(store, ids) == [(body,) for body in bodies]
        with pytest.raises(RequestTooLargeError, match="1,001 bytes"):
            client.submit_many("echo", [b"small", b"x" * 1001])
    assert sum(store.stats().counts.values()) == 45, "nothing sent once one was too large"


def test_a_server_refusal_of_a_batch_is_one_error(db_url: str, stack: ExitStack) -> None:
    endpoint, store = titanic_at(stack, db_url)
    with TitanicClient(endpoint, timeout=5.0) as client, \
            pytest.raises(TitanicServiceError, match="refused the batch: 400"):
        client.submit_many("echo", [b"a", b"b"], keys=["fine", "k" * 256])
    assert sum(store.stats().counts.values()) == 0


def test_the_asyncio_client_submits_many(db_url: str, stack: ExitStack) -> None:
    endpoint, store = titanic_at(stack, db_url)

    async def submit() -> list[str]:
        async with AsyncTitanicClient(endpoint, timeout=5.0) as client:
            return await client.submit_many("echo", [b"1", b"2", b"3"], keys=["a", None, "a"])

    ids = asyncio.run(submit())
    assert ids[0] == ids[2] != ids[1]
    assert stored_bodies(store, ids[:2]) == [(b"1",), (b"2",)]
    assert store.get(ids[1]).status is RequestStatus.PENDING  # type: ignore[union-attr]


def test_a_standard_server_is_sent_the_requests_one_by_one(stack: ExitStack) -> None:
    endpoint = start_broker(stack).bound[0]
    server = StandardTitanic(endpoint).start(stack)
    with TitanicClient(endpoint, timeout=2.0) as client:
        ids = client.submit_many("echo", [b"one", b"two", [b"three", b"3"]], keys=["k", None, None])
    # As a standard server stores a plain titanic.request: no batch form, no key.
    assert [server.requests[request_id] for request_id in ids] == [
        [b"echo", b"one"], [b"echo", b"two"], [b"echo", b"three", b"3"]]


def test_the_cli_submits_one_request_per_line_of_stdin(db_url: str, stack: ExitStack) -> None:
    endpoint, store = titanic_at(stack, db_url)
    lines = b"first\r\nsecond\n\nfourth, after an empty line\n"
    done = run_cli("submit-many", "echo", "-b", endpoint, "--key-prefix", "import-7:",
                   input=lines)
    assert done.returncode == 0, done.stderr
    ids = done.stdout.decode().split()
    assert stored_bodies(store, ids) == [(b"first",), (b"second",), (b"",),
                                         (b"fourth, after an empty line",)]
    assert [store.get(i).idempotency_key for i in ids] == [  # type: ignore[union-attr]
        f"import-7:{n}" for n in range(1, 5)]
    again = run_cli("submit-many", "echo", "-b", endpoint, "--key-prefix", "import-7:",
                    input=lines)
    assert (again.returncode, again.stdout) == (0, done.stdout), "the same keys: the same UUIDs"
    empty = run_cli("submit-many", "echo", "-b", endpoint, input=b"")
    assert (empty.returncode, empty.stdout) == (0, b"")


def test_the_cli_says_why_a_batch_was_refused_in_one_line(stack: ExitStack) -> None:
    endpoint = start_broker(stack).bound[0]
    nobody = run_cli("submit-many", "echo", "-b", endpoint, "--timeout", "0.3",
                     "--retries", "0", input=b"a\nb\n")
    assert nobody.returncode == 6, nobody.stderr
    assert nobody.stderr.count(b"\n") == 1 and b"Traceback" not in nobody.stderr
    long_prefix = run_cli("submit-many", "echo", "-b", endpoint, "--key-prefix", "p" * 255,
                          input=b"a\n")
    assert long_prefix.returncode == 2
    assert b"too long" in long_prefix.stderr and long_prefix.stderr.count(b"\n") == 1
