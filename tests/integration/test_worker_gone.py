"""A worker killed with a request in hand is one line in the broker's log, once: the broker
removes it when a message to it finds its connection closed, and sends it nothing more."""

from __future__ import annotations

import sys
from pathlib import Path

import zmq
from titanic_support import Processes, free_endpoint, raw_dealer, wait_until

BUSY_WORKER = """
import sys, time
from pathlib import Path
from titanic.worker import Worker

def handler(frames):
    Path(sys.argv[2]).write_text("busy")   # tells the test this worker has the request
    time.sleep(600)
    return frames

Worker(sys.argv[1], "slow", handler, heartbeat_interval=0.1).run()
"""
READY = [b"", b"MDPW01", b"\x01", b"other"]
HEARTBEAT = [b"", b"MDPW01", b"\x04"]


def heartbeats_answered(worker: zmq.Socket[bytes]) -> int:
    """Answer every HEARTBEAT waiting at a hand-made worker (keeping it alive); how many."""
    count = 0
    while worker.poll(0):
        if worker.recv_multipart() == HEARTBEAT:
            worker.send_multipart(HEARTBEAT)
            count += 1
    return count


def test_a_worker_killed_mid_request_is_logged_once_and_still_counted(
        procs: Processes, tmp_path: Path) -> None:
    endpoint = free_endpoint()
    broker = procs.broker(endpoint, heartbeat=0.1)
    script = tmp_path / "busy_worker.py"
    script.write_text(BUSY_WORKER)
    busy = tmp_path / "busy"
    doomed = procs.start("doomed", [sys.executable, str(script), endpoint, str(busy)])
    with raw_dealer(endpoint) as other, raw_dealer(endpoint) as client:
        other.send_multipart(READY)  # a live worker: the heartbeats it gets count the ticks
        client.send_multipart([b"", b"MDPC01", b"slow", b"job"])
        wait_until(lambda: heartbeats_answered(other) >= 0 and busy.exists(), timeout=30,
                   message="the worker took the request")
        Processes.kill(doomed)  # SIGKILL with the request in hand
        wait_until(lambda: heartbeats_answered(other) >= 0 and "removed with" in procs.log(
            "broker"), timeout=30, message="the broker removed the dead worker")
        ticks = 0
        while ticks < 20:  # 20 of the broker's ticks (0.1 s each) after the removal
            assert other.poll(10_000), "the broker stopped sending heartbeats"
            ticks += heartbeats_answered(other)
        assert Processes.terminate(broker) == 0
    log = procs.log("broker")
    removed = [line for line in log.splitlines() if "removed" in line]
    assert len(removed) == 1, log
    assert " WARNING titanic.broker: worker " in removed[0]
    assert removed[0].endswith("for 'slow' removed with 1 request(s) in hand (its connection "
                               "closed): their clients must retry")
    assert "unroutable" not in log.split("broker stopped:")[0], log
    stopped = log.split("broker stopped: ")[1].splitlines()[0]
    counted = dict(item.rsplit(" ", 1) for item in stopped.split(", "))
    assert counted["workers gone"] == "1" and int(counted["unroutable"]) >= 1, stopped
    assert counted["abandoned requests"] == "1", stopped
