"""CURVE's cost: MDP round trips per second through the same broker with and without CURVE.

    python -m titanic.bench.curve [--requests N] [--sync-requests N] [--connects N] [--rounds 3]

A broker and echo workers run as subprocesses on loopback tcp, once in plaintext and once with
CURVE (throw-away keys, the broker admitting them through its allowed folder and ZAP); the client
runs here. The two set-ups take turns for `rounds` rounds and each figure is the best of its
rounds, so both see the same machine at the same time. Three loads: one request at a time on a
kept socket, one request per new socket (the handshake, ZAP included, in every round trip), and
`depth` requests in flight.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from titanic._zmq import SocketHook
from titanic.bench import mdp
from titanic.bench.common import Result, free_port, spawn, stop_all, titanic_command
from titanic.protocol.mdp import Dialect
from titanic.security import load_client_hook, write_keypair

SERVICE = b"echo"
MODES = ("plaintext", "CURVE")


@dataclass(frozen=True)
class CurveBenchOptions:
    """How much to measure."""

    requests: int = 20_000
    sync_requests: int = 3_000
    connects: int = 500
    size: int = 100
    depth: int = 32
    workers: int = 2
    rounds: int = 3


@dataclass(frozen=True)
class _Keys:
    broker: list[str]
    peer: list[str]
    client: SocketHook


def _make_keys(folder: Path) -> _Keys:
    allowed = folder / "allowed"
    allowed.mkdir()
    write_keypair(folder, "broker")
    for name in ("worker", "client"):
        public_file, _ = write_keypair(folder, name)
        (allowed / public_file.name).write_bytes(public_file.read_bytes())
    return _Keys(
        broker=["--curve-secret", str(folder / "broker.key_secret"), "--curve-allow",
                str(allowed)],
        peer=["--curve-server-key", str(folder / "broker.key"), "--curve-key",
              str(folder / "worker.key_secret")],
        client=load_client_hook(folder / "broker.key", folder / "client.key_secret"),
    )


@contextmanager
def _running(keys: _Keys | None, workers: int) -> Iterator[str]:
    """A broker with echo workers, CURVE on when `keys` is given; yields its endpoint."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    broker_args = keys.broker if keys else []
    peer_args = keys.peer if keys else []
    processes = [spawn(titanic_command("broker", "--bind", endpoint, *broker_args))]
    try:
        processes.extend(spawn(titanic_command("worker", "echo", "--broker", endpoint, *peer_args))
                         for _ in range(workers))
        mdp.wait_until_served(endpoint, Dialect.MDP01, workers,
                              configure_socket=keys.client if keys else None)
        yield endpoint
    finally:
        stop_all(processes)


def run(options: CurveBenchOptions) -> dict[str, dict[str, Result]]:
    """Best result of each load by mode: {load name: {"plaintext": ..., "CURVE": ...}}."""
    body = b"x" * options.size
    best: dict[str, dict[str, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="titanic-curve-bench-") as folder:
        keys = _make_keys(Path(folder))
        for round_number in range(1, options.rounds + 1):
            for mode in MODES:
                mode_keys = keys if mode == "CURVE" else None
                with _running(mode_keys, options.workers) as endpoint:
                    hook = mode_keys.client if mode_keys else None
                    for result in (
                        mdp.measure_sync(endpoint, Dialect.MDP01, options.sync_requests, body,
                                         configure_socket=hook),
                        mdp.measure_sync(endpoint, Dialect.MDP01, options.connects, body,
                                         new_socket=True, configure_socket=hook),
                        mdp.measure_pipelined(endpoint, Dialect.MDP01, options.requests, body,
                                              options.depth, configure_socket=hook),
                    ):
                        print(f"  round {round_number} {mode:9} {result.name:28} "
                              f"{result.rate:9.0f}/s", file=sys.stderr, flush=True)
                        kept = best.setdefault(result.name, {}).get(mode)
                        if kept is None or result.rate > kept.rate:
                            best[result.name][mode] = result
    return best


def format_comparison(best: dict[str, dict[str, Result]]) -> str:
    """The side-by-side table: rates, CURVE as a share of plaintext, median latencies."""
    lines = [f"{'load':28} {'plain/s':>9} {'CURVE/s':>9} {'CURVE':>7} "
             f"{'p50 plain':>10} {'p50 CURVE':>10}"]
    for name, by_mode in best.items():
        plain, curve = by_mode["plaintext"], by_mode["CURVE"]
        share = curve.rate / plain.rate if plain.rate else 0.0
        lines.append(f"{name:28} {plain.rate:9.0f} {curve.rate:9.0f} {share:6.0%} "
                     f"{plain.percentile(0.5):8.3f}ms {curve.percentile(0.5):8.3f}ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    defaults = CurveBenchOptions()
    parser.add_argument("--requests", type=int, default=defaults.requests,
                        help="requests of the pipelined load")
    parser.add_argument("--sync-requests", type=int, default=defaults.sync_requests)
    parser.add_argument("--connects", type=int, default=defaults.connects,
                        help="requests of the new-socket-per-call load")
    parser.add_argument("--depth", type=int, default=defaults.depth)
    parser.add_argument("--size", type=int, default=defaults.size, help="body bytes")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    args = parser.parse_args(argv)
    options = CurveBenchOptions(requests=args.requests, sync_requests=args.sync_requests,
                                connects=args.connects, size=args.size, depth=args.depth,
                                workers=args.workers, rounds=args.rounds)
    best = run(options)
    print(f"{options.size}-byte bodies, {options.workers} echo workers, loopback tcp, "
          f"best of {options.rounds} alternating rounds")
    print(format_comparison(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
