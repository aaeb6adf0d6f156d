"""The daemons as users run them: --metrics-bind serves metrics and /healthz, --log-format json
writes one JSON object per line carrying the component, and the request's UUID and service."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from titanic_support import Processes, free_endpoint, free_port, run_cli, wait_until


def fetch(port: int, path: str) -> tuple[int, str]:
    """Status and body of http://127.0.0.1:PORT/PATH (0 if nothing answers yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def json_lines(text: str) -> list[dict[str, object]]:
    """The log's lines, each parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_broker_and_dispatcher_serve_metrics_health_and_json_logs(procs: Processes,
                                                                  tmp_path: Path) -> None:
    broker = free_endpoint()
    broker_port, dispatcher_port = free_port(), free_port()
    procs.broker(broker, "--metrics-bind", f"127.0.0.1:{broker_port}", "--log-format", "json")
    procs.cli("dispatcher", "dispatcher", "--broker", broker, "--heartbeat", "0.2",
              "--db", f"sqlite:///{tmp_path / 'titanic.db'}",
              "--metrics-bind", f"127.0.0.1:{dispatcher_port}",
              env={"TITANIC_LOG_FORMAT": "json", "TITANIC_LOG_LEVEL": "debug"})
    wait_until(lambda: fetch(dispatcher_port, "/healthz")[0] == 200, timeout=30,
               message=f"dispatcher healthy: {procs.log('dispatcher')}")
    assert fetch(broker_port, "/healthz")[0] == 200

    submitted = run_cli("submit", "echo", "hi", "--broker", broker)
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    wait_until(lambda: 'titanic_requests{service="echo",state="pending"} 1.0'
               in fetch(dispatcher_port, "/metrics")[1], message="request counted")
    assert "titanic_broker_workers{service=\"titanic.request\"}" in fetch(broker_port,
                                                                        "/metrics")[1]

    dispatcher_lines = json_lines(procs.log("dispatcher"))
    assert {line["component"] for line in dispatcher_lines} == {"dispatcher"}
    stored = [line for line in dispatcher_lines if line.get("request") == request_id]
    assert stored and stored[0]["service"] == "echo" and stored[0]["level"] == "debug"
    broker_lines = json_lines(procs.log("broker"))
    assert any(line["component"] == "broker" and line.get("service") == "titanic.request"
               for line in broker_lines)
