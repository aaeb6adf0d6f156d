"""100,000 random and malformed messages against a running broker and dispatcher (apart, and
the dispatcher in the broker).

Neither may crash, their memory must stay bounded, and valid traffic alongside must succeed.
The seed is printed; set TITANIC_FUZZ_SEED to replay a failure.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import zmq
from titanic_support import Processes, free_endpoint, replayable_seed, wait_until

from titanic.client import Client
from titanic.client.tsp import ReplyState, TitanicClient
from titanic.errors import TitanicTimeoutError

MESSAGES = 100_000
MAX_MESSAGE = 1_000_000
HEADERS = [b"", b"MDPC01", b"MDPW01", b"MDPC02", b"MDPW02", b"\x00", b"\x01", b"\x02", b"\x03",
           b"\x04", b"\x05", b"\x06", b"\x07", b"echo", b"titanic.request", b"titanic.reply",
           b"titanic.close", b"mmi.service", b"mmi.x"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def random_message(rng: random.Random) -> list[bytes]:
    """Mostly protocol-shaped garbage; some valid requests to TSP services with garbage bodies."""
    kind = rng.random()
    if kind < 0.15:  # a valid 7/MDP request to a TSP service, with a random body
        service = rng.choice([b"titanic.request", b"titanic.reply", b"titanic.close"])
        return [b"", b"MDPC01", service, *(rng.randbytes(rng.randint(0, 40))
                                           for _ in range(rng.randint(0, 4)))]
    frames = []
    for _ in range(rng.randint(1, 9)):
        if rng.random() < 0.7:
            frames.append(rng.choice(HEADERS))
        else:
            frames.append(rng.randbytes(rng.choice([0, 1, 5, 32, 300])))
    return frames


def wait_read_through(sock: zmq.Socket[bytes], service: bytes, timeout: float = 30) -> None:
    """Until the broker has read everything sent on `sock` so far: it reads a connection's
    messages in order, so once a request sent after them is answered, it has read them all.
    What else arrives meanwhile is dropped; a request whose answer the full receive queue lost
    is sent again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.send_multipart([b"", b"MDPC01", service, b"read through"])
        resend_at = min(deadline, time.monotonic() + 0.5)
        while (left := resend_at - time.monotonic()) > 0:
            if sock.poll(left * 1000) and sock.recv_multipart()[-1] == b"read through":
                return
    raise AssertionError(f"the broker did not read through in {timeout} s")


@pytest.mark.parametrize("hosted", [False, True], ids=["own dispatcher", "in the broker"])
def test_daemons_survive_100k_malformed_messages(procs: Processes, tmp_path: Path,
                                                 hosted: bool) -> None:
    rng = random.Random(replayable_seed("fuzz", "TITANIC_FUZZ_SEED"))
    endpoint = free_endpoint()
    db = ["--db", f"sqlite:///{tmp_path / 'fuzz.db'}"]
    broker = procs.broker(endpoint, "--max-message-size", str(MAX_MESSAGE), "--request-ttl", "2",
                          *(["--titanic", *db] if hosted else []))
    daemons = {"broker": broker}
    if not hosted:
        daemons["dispatcher"] = procs.cli("dispatcher", "dispatcher", "--broker", endpoint,
                                          "--heartbeat", "0.2", *db)
    procs.cli("worker", "worker", "echo", "--broker", endpoint, "--heartbeat", "0.2",
              "--service", "valid-echo")
    titanic = TitanicClient(endpoint, timeout=2, retries=10)
    # Random READYs register the fuzzer as a worker of whatever it names, as MDP allows any peer
    # to: valid traffic uses a service name the fuzzer never says, and retries generously.
    echo = Client(endpoint, timeout=2, retries=10)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    fuzzer = context.socket(zmq.DEALER)  # blocks at its high-water mark: paced by the broker
    fuzzer.linger = 0
    fuzzer.connect(endpoint)
    # Frames beyond the maximum message size cut their connection (and what is queued on it),
    # so they go on a socket of their own.
    oversize = context.socket(zmq.DEALER)
    oversize.linger = 0
    oversize.connect(endpoint)
    try:
        def ready() -> bool:
            try:
                return echo.request("valid-echo", b"up", timeout=0.5) == [b"up"]
            except TitanicTimeoutError:
                return False
        wait_until(ready, timeout=30, message="echo served")
        first_id = titanic.submit("valid-echo", b"before")
        before = {name: rss_kib(proc.pid) for name, proc in daemons.items()}
        for n in range(MESSAGES):
            fuzzer.send_multipart(random_message(rng), copy=False)
            if n % 1_000 == 0:
                oversize.send_multipart([b"", b"MDPC01", b"echo", b"x" * (MAX_MESSAGE + 1)])
            if n % 10_000 == 0:  # valid traffic alongside
                assert echo.request("valid-echo", str(n).encode()) == [str(n).encode()]
        wait_read_through(fuzzer, b"valid-echo")  # the count below includes every message
        for name, proc in daemons.items():
            assert proc.poll() is None, f"{name} died"
        assert echo.request("valid-echo", b"after") == [b"after"]
        last_id = titanic.submit("valid-echo", b"after")
        for request_id, body in ((first_id, b"before"), (last_id, b"after")):
            fetched = titanic.wait(request_id, timeout=30)
            assert fetched.state is ReplyState.DONE and fetched.reply == [body]
        for name, proc in daemons.items():
            grown = rss_kib(proc.pid) - before[name]
            assert grown < 64 * 1024, f"{name} grew by {grown} KiB"
    finally:
        fuzzer.close(0)
        oversize.close(0)
        context.term()
        titanic.close()
        echo.close()
    for proc in reversed(daemons.values()):
        assert Processes.terminate(proc) == 0
    stats = procs.log("broker").rsplit("broker stopped: ", 1)[1].splitlines()[0]
    counted = dict(item.rsplit(" ", 1) for item in stats.split(", "))
    handled, malformed = int(counted["messages"]), int(counted["malformed"])
    assert handled >= MESSAGES, stats
    assert malformed >= MESSAGES // 2, stats
    assert "Traceback" not in procs.log("broker") + procs.log("dispatcher")
    if hosted:  # its dispatcher stopped with it, and stored what the fuzzer asked it to
        assert "hosted dispatcher stopped" in procs.log("broker")

