"""The seed's failure cases, with real processes killed for real."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from titanic_support import Processes, free_endpoint, raw_dealer, recv_within, wait_until

from titanic.client import Client
from titanic.errors import TitanicError

SLOW_WORKER = """
import sys, time
from pathlib import Path
from titanic.worker import Worker

def handler(frames):
    Path(sys.argv[2]).write_text("busy")   # tells the test this worker has the request
    time.sleep(float(sys.argv[3]))
    return [b"served by " + sys.argv[4].encode(), *frames]

Worker(sys.argv[1], "slow", handler, heartbeat_interval=0.2, reconnect_initial=0.05).run()
"""


def wait_for_service(endpoint: str, service: str, timeout: float = 15) -> None:
    with Client(endpoint, timeout=0.5, retries=0) as asker:
        def present() -> bool:
            try:
                return asker.request("mmi.service", service.encode()) == [b"200"]
            except TitanicError:
                return False
        wait_until(present, timeout=timeout, message=f"{service} registered")


def test_worker_dies_mid_request_and_the_retry_is_served_by_another(
        procs: Processes, tmp_path: Path) -> None:
    endpoint = free_endpoint()
    procs.broker(endpoint)
    script = tmp_path / "slow_worker.py"
    script.write_text(SLOW_WORKER)
    doomed_mark = tmp_path / "doomed-busy"
    doomed = procs.start("doomed", [sys.executable, str(script), endpoint, str(doomed_mark), "30",
                                    "doomed"])
    wait_for_service(endpoint, "slow")
    with Client(endpoint, timeout=2.0, retries=3) as client:
        answer: list[list[bytes]] = []
        caller = threading.Thread(target=lambda: answer.append(client.request("slow", b"job")))
        caller.start()
        wait_until(doomed_mark.exists, timeout=10, message="doomed worker took the request")
        procs.start("rescuer", [sys.executable, str(script), endpoint, str(tmp_path / "r"), "0",
                                "rescuer"])
        Processes.kill(doomed)  # SIGKILL mid-request
        caller.join(20)
    assert answer == [[b"served by rescuer", b"job"]]


def test_broker_killed_and_restarted_on_the_same_port(procs: Processes) -> None:
    endpoint = free_endpoint()
    broker = procs.broker(endpoint)
    procs.cli("worker", "worker", "echo", "--broker", endpoint, "--service", "echo",
              "--heartbeat", "0.2")
    wait_for_service(endpoint, "echo")
    with Client(endpoint, timeout=1.0, retries=20) as client:
        assert client.request("echo", b"before") == [b"before"]
        Processes.kill(broker)
        procs.broker(endpoint, name="broker2")
        # The same client and the same worker, neither restarted: the worker notices the
        # silence, reconnects and registers again; the client's retries reach the new broker.
        assert client.request("echo", b"after") == [b"after"]


def test_sigterm_disconnects_workers_and_exits_zero(procs: Processes) -> None:
    endpoint = free_endpoint()
    broker = procs.broker(endpoint)
    with raw_dealer(endpoint) as worker:
        worker.send_multipart([b"", b"MDPW01", b"\x01", b"svc"])
        wait_for_service(endpoint, "svc")
        assert Processes.terminate(broker, timeout=5) == 0
        while True:
            frames = recv_within(worker, 3)
            if frames != [b"", b"MDPW01", b"\x04"]:  # heartbeats may come first
                break
        assert frames == [b"", b"MDPW01", b"\x05"]
    assert "broker stopped" in procs.log("broker")
