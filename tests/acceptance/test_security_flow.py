"""CURVE through the installed commands, in subprocesses: keygen, a CURVE broker, the issue-4 flow
(submit, fetch, close) with keys from options and TITANIC_* variables, `titanic up --curve-dir`,
refused peers of every role, and misconfiguration as one line with a documented exit code."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from titanic_support import Processes, free_endpoint, run_cli, wait_until

from titanic._zmq import SocketHook
from titanic.client import Client
from titanic.errors import TitanicTimeoutError
from titanic.security import load_client_hook

HEARTBEAT = ["--heartbeat", "0.2"]
FAST_DISPATCHER = [*HEARTBEAT, "--request-timeout", "2", "--backoff", "0.1", "--backoff-max",
                   "0.5"]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """broker, alice, worker, dispatcher and mallory key pairs; allowed/ admits alice and the
    worker, admin/ the dispatcher (which learns who owns each request)."""
    folder = tmp_path / "keys"
    for name in ("broker", "alice", "worker", "dispatcher", "mallory"):
        made = run_cli("keygen", name, "--dir", str(folder))
        assert made.returncode == 0, made.stderr
    (folder / "allowed").mkdir()
    (folder / "admin").mkdir()
    for name in ("alice", "worker"):
        shutil.copyfile(folder / f"{name}.key", folder / "allowed" / f"{name}.key")
    shutil.copyfile(folder / "dispatcher.key", folder / "admin" / "dispatcher.key")
    return folder


def as_peer(keys: Path, name: str) -> list[str]:
    return ["--curve-server-key", str(keys / "broker.key"), "--curve-key",
            str(keys / f"{name}.key_secret")]


def peer_env(keys: Path, name: str) -> dict[str, str]:
    return {"TITANIC_CURVE_SERVER_KEY": str(keys / "broker.key"),
            "TITANIC_CURVE_KEY": str(keys / f"{name}.key_secret")}


def start_broker(procs: Processes, keys: Path, *extra: str) -> str:
    endpoint = free_endpoint()
    procs.cli("broker", "broker", "--bind", endpoint, *HEARTBEAT, "--curve-secret",
              str(keys / "broker.key_secret"), "--curve-allow", str(keys / "allowed"),
              "--curve-admin", str(keys / "admin"), *extra)
    return endpoint


def has_worker(endpoint: str, hook: SocketHook, service: str) -> bool:
    try:
        with Client(endpoint, timeout=0.5, retries=0, configure_socket=hook) as client:
            return client.request("mmi.service", service.encode()) == [b"200"]
    except TitanicTimeoutError:
        return False


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    assert b"Traceback" not in result.stderr
    assert result.stderr.count(b"\n") == 1, result.stderr
    return result.stderr.decode()


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path: Path) -> None:
    made = run_cli("keygen", "node", "--dir", str(tmp_path / "k"))
    assert made.returncode == 0, made.stderr
    secret = tmp_path / "k" / "node.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert str(tmp_path / "k" / "node.key") in made.stdout.decode()
    assert "public key is " in made.stdout.decode()
    again = run_cli("keygen", "node", "--dir", str(tmp_path / "k"))
    assert again.returncode == 8 and "not overwriting" in one_line(again)
    bad = run_cli("keygen", "../node", "--dir", str(tmp_path / "k"))
    assert bad.returncode == 2 and "bad key name" in one_line(bad)


def test_titanic_flow_over_curve(procs: Processes, keys: Path, tmp_path: Path) -> None:
    broker = start_broker(procs, keys)
    procs.cli("dispatcher", "dispatcher", "--broker", broker, "--db",
              f"sqlite:///{tmp_path / 't.db'}", *FAST_DISPATCHER, env=peer_env(keys, "dispatcher"))
    alice = peer_env(keys, "alice")
    submitted = run_cli("submit", "echo", "hello over CURVE", "--broker", broker, "--timeout", "5",
                        env=alice)
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    pending = run_cli("fetch", request_id, "--broker", broker, env=alice)
    assert pending.returncode == 3, pending.stderr
    procs.cli("worker", "worker", "echo", "--broker", broker, *HEARTBEAT,
              *as_peer(keys, "worker"))
    done = run_cli("fetch", "--wait", "--timeout", "30", request_id, "--broker", broker,
                   env=alice)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello over CURVE\n"
    # Another allowed key learns nothing of alice's request, and cannot close it.
    others = run_cli("fetch", request_id, "--broker", broker, *as_peer(keys, "worker"))
    assert others.returncode == 4 and "unknown" in one_line(others)
    assert run_cli("close", request_id, "--broker", broker, *as_peer(keys, "worker")
                   ).returncode == 0
    closed = run_cli("close", request_id, "--broker", broker, *as_peer(keys, "alice"))
    assert closed.returncode == 0, closed.stderr
    gone = run_cli("fetch", request_id, "--broker", broker, env=alice)
    assert gone.returncode == 4 and "unknown" in one_line(gone)
    called = run_cli("call", "echo", "direct", "--broker", broker, env=alice)
    assert called.returncode == 0 and called.stdout == b"direct\n", called.stderr
    assert run_cli("mmi", "echo", "--broker", broker, env=alice).stdout == b"200\n"


def test_titanic_up_with_curve_dir_runs_the_flow(procs: Processes, tmp_path: Path) -> None:
    broker, curve = free_endpoint(), tmp_path / "curve"
    up = procs.cli("up", "up", "--demo", "--bind", broker, "--db",
                   f"sqlite:///{tmp_path / 'up.db'}", "--curve-dir", str(curve),
                   env={"TITANIC_CURVE_KEY": "/nonexistent: up must not pass this on"})
    try:
        run_up_flow(broker, curve)
        assert Processes.terminate(up, timeout=30) == 0
    finally:
        Processes.terminate(up, timeout=30)  # SIGKILL would leave its children running
    assert stat.S_IMODE((curve / "client.key_secret").stat().st_mode) == 0o600


def run_up_flow(broker: str, curve: Path) -> None:
    wait_until((curve / "allowed" / "client.key").exists, message="keys made")
    client = {"TITANIC_CURVE_SERVER_KEY": str(curve / "broker.key"),
              "TITANIC_CURVE_KEY": str(curve / "client.key_secret")}
    submitted = run_cli("submit", "echo", "hello from up", "--broker", broker, "--timeout", "2",
                        "--retries", "10", env=client)
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.decode().strip()
    done = run_cli("fetch", "--wait", "--timeout", "30", request_id, "--broker", broker,
                   env=client)
    assert done.returncode == 0 and done.stdout == b"hello from up\n", done.stderr
    assert run_cli("close", request_id, "--broker", broker, env=client).returncode == 0
    plaintext = run_cli("submit", "echo", "x", "--broker", broker, "--timeout", "0.5",
                        "--retries", "0")
    assert plaintext.returncode == 9 and "requires CURVE" in one_line(plaintext)


def test_refused_peers_of_every_role(procs: Processes, keys: Path, tmp_path: Path) -> None:
    broker = start_broker(procs, keys)
    alice = load_client_hook(keys / "broker.key", keys / "alice.key_secret")
    wait_until(lambda: not has_worker(broker, alice, "echo"), message="broker up")
    worker = procs.cli("worker", "worker", "echo", "--broker", broker, *HEARTBEAT,
                       *as_peer(keys, "mallory"))
    dispatcher = procs.cli("dispatcher", "dispatcher", "--broker", broker, "--db",
                           f"sqlite:///{tmp_path / 't.db'}", *FAST_DISPATCHER,
                           *as_peer(keys, "mallory"))
    refused = run_cli("submit", "echo", "x", "--broker", broker, "--timeout", "0.5", "--retries",
                      "1", *as_peer(keys, "mallory"))
    assert refused.returncode == 9 and "refused this CURVE key" in one_line(refused)
    plaintext = run_cli("fetch", "0" * 32, "--broker", broker, "--timeout", "0.5", "--retries",
                        "0")
    assert plaintext.returncode == 9 and "requires CURVE" in one_line(plaintext)
    wrong_server = run_cli("close", "0" * 32, "--broker", broker, "--timeout", "0.5",
                           "--retries", "0", "--curve-server-key", str(keys / "alice.key"),
                           "--curve-key", str(keys / "alice.key_secret"))
    assert wrong_server.returncode == 9 and "curve-server-key" in one_line(wrong_server)
    wait_until(lambda: procs.log("broker").count("refused CURVE peer at 127.0.0.1") >= 3,
               message="refusals logged with the peer's address")
    # The plaintext client hangs up at once: libzmq reports either the mechanism mismatch or,
    # when the hang-up comes first, a handshake cut short (test_security.py pins the former).
    broker_log = procs.log("broker")
    assert ("plaintext peer" in broker_log
            or "connection was lost during the security handshake" in broker_log)
    assert not has_worker(broker, alice, "echo")
    assert not has_worker(broker, alice, "titanic.request")
    # Refused daemons keep trying (a key added later gets them in) and still stop on SIGTERM.
    assert Processes.terminate(worker, timeout=10) == 0
    assert Processes.terminate(dispatcher, timeout=10) == 0


def test_a_dispatcher_whose_key_is_not_an_admin_stops_with_exit_9(procs: Processes, keys: Path,
                                                                  tmp_path: Path) -> None:
    # alice's key is allowed but not in the admin folder: the broker will not tell it who
    # sends each request, and a dispatcher needs that to keep each request's owner.
    broker = start_broker(procs, keys)
    alice = load_client_hook(keys / "broker.key", keys / "alice.key_secret")
    wait_until(lambda: not has_worker(broker, alice, "echo"), message="broker up")
    refused = run_cli("dispatcher", "--broker", broker, "--db", f"sqlite:///{tmp_path / 't.db'}",
                      *FAST_DISPATCHER, *as_peer(keys, "alice"), timeout=60)
    assert refused.returncode == 9, refused.stderr
    last = refused.stderr.decode().strip().splitlines()[-1]
    assert last.startswith(("titanic-dispatcher: ", "titanic: ")), last
    assert "not in its admin folder (--curve-admin)" in last and "Traceback" not in last
    assert not has_worker(broker, alice, "titanic.request")


def test_separate_worker_endpoint_with_its_own_keys(procs: Processes, keys: Path,
                                                    tmp_path: Path) -> None:
    workers_allowed = tmp_path / "workers-allowed"
    workers_allowed.mkdir()
    shutil.move(keys / "allowed" / "worker.key", workers_allowed / "worker.key")
    worker_endpoint = free_endpoint()
    broker = start_broker(procs, keys, "--worker-bind", worker_endpoint,
                          "--curve-allow-workers", str(workers_allowed))
    procs.cli("worker", "worker", "echo", "--broker", worker_endpoint, *HEARTBEAT,
              *as_peer(keys, "worker"))
    alice = load_client_hook(keys / "broker.key", keys / "alice.key_secret")
    wait_until(lambda: has_worker(broker, alice, "echo"), message="worker registered")
    called = run_cli("call", "echo", "two doors", "--broker", broker, *as_peer(keys, "alice"))
    assert called.returncode == 0 and called.stdout == b"two doors\n", called.stderr
    at_worker_door = run_cli("call", "echo", "x", "--broker", worker_endpoint, "--timeout",
                             "0.5", "--retries", "0", *as_peer(keys, "alice"))
    assert at_worker_door.returncode == 9  # alice's key is not among the workers'


def test_broker_limits_answer_clearly(procs: Processes, keys: Path, tmp_path: Path) -> None:
    broker = start_broker(procs, keys, "--max-request-size", "1000",
                          "--max-queued-bytes-per-client", "5000")
    procs.cli("dispatcher", "dispatcher", "--broker", broker, "--db",
              f"sqlite:///{tmp_path / 't.db'}", *FAST_DISPATCHER, *as_peer(keys, "dispatcher"))
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1001)
    refused = run_cli("submit", "echo", f"@{big}", "--broker", broker, "--timeout", "5",
                      *as_peer(keys, "alice"))
    assert refused.returncode == 1
    # The broker counts the service name too: titanic.request (15), then its body: the empty
    # frame and the 32-digit idempotency key the command made, the service name, the payload.
    assert "413 request of 1052 bytes exceeds the broker's limit of 1000" in one_line(refused)
    accepted = run_cli("submit", "echo", "small", "--broker", broker, "--timeout", "5",
                       *as_peer(keys, "alice"))
    assert accepted.returncode == 0, accepted.stderr


def test_curve_misconfiguration_is_one_line_and_a_documented_code(keys: Path,
                                                                  tmp_path: Path) -> None:
    endpoint = free_endpoint()
    half = run_cli("submit", "echo", "x", "--broker", endpoint, "--curve-key",
                   str(keys / "alice.key_secret"))
    assert half.returncode == 2 and "both or neither" in one_line(half)
    half_env = run_cli("fetch", "0" * 32, "--broker", endpoint,
                       env={"TITANIC_CURVE_SERVER_KEY": str(keys / "broker.key")})
    assert half_env.returncode == 2 and "--curve-key" in one_line(half_env)
    missing = run_cli("call", "echo", "--broker", endpoint, *as_peer(keys, "nobody"))
    assert missing.returncode == 8 and "does not exist" in one_line(missing)
    public_as_secret = run_cli("worker", "echo", "--broker", endpoint, "--curve-server-key",
                               str(keys / "broker.key"), "--curve-key", str(keys / "alice.key"))
    assert public_as_secret.returncode == 8 and "no secret key" in one_line(public_as_secret)
    broker_half = run_cli("broker", "--bind", endpoint, "--curve-secret",
                          str(keys / "broker.key_secret"))
    assert broker_half.returncode == 2 and "--curve-allow" in one_line(broker_half)
    admin_alone = run_cli("broker", "--bind", endpoint, "--curve-admin", str(keys / "admin"))
    assert admin_alone.returncode == 2 and "--curve-admin needs" in one_line(admin_alone)
    no_folder = run_cli("broker", "--bind", endpoint, "--curve-secret",
                        str(keys / "broker.key_secret"), "--curve-allow",
                        str(tmp_path / "no-such-folder"))
    assert no_folder.returncode == 8 and "does not exist" in one_line(no_folder)
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("not a certificate\n")
    bad_dispatcher = run_cli("dispatcher", "--broker", endpoint, "--db",
                             f"sqlite:///{tmp_path / 'd.db'}", "--curve-server-key",
                             str(keys / "broker.key"), "--curve-key", str(garbage))
    assert bad_dispatcher.returncode == 8 and "no CURVE public key" in one_line(bad_dispatcher)
