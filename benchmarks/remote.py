"""titanic across a link with latency: client and broker in two network namespaces.

Two namespaces, "near" (the client) and "far" (broker, dispatcher on a new SQLite file, two echo
workers; with --hosted the dispatcher runs in the broker), joined by a veth pair. `titanic bench
--broker` runs in the near one against three paths to the same broker, in alternating rounds:
- the veth pair alone;
- through a relay in the near namespace (benchmarks/delay_relay.py) that adds nothing;
- through the same relay adding DELAY ms each way (default 0.5), the link's latency.
With --freelance the far namespace also runs two freelance echo servers per path (`titanic
worker echo --bind`, each advertising the endpoint that path reaches it by: a server's identity
is the endpoint its clients connect to) and the brokerless rows are measured on the same paths.
The relay stands in for `tc netem`, which this machine's kernel lacks. It costs CPU of its own,
so the delay's effect is the delayed path against the relay adding nothing; the veth row shows
what the relay itself costs.

Needs root (ip netns):

    python benchmarks/remote.py [--rounds 3] [--delay-ms 0.5] [--requests 10000] [--depth 32]
                                [--hosted] [--freelance]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from titanic.bench.common import spawn, stop_all, titanic_command

NEAR, FAR = "titanic-near", "titanic-far"
#: Freelance servers: path i's server k binds FAR_IP:FREELANCE_PORT + 10 i + k; a relayed path's
#: relay listens on RELAYED_FREELANCE_PORT + 10 i + k in the near namespace.
FREELANCE_PORT, RELAYED_FREELANCE_PORT, FREELANCE_SERVERS = 5600, 6100, 2
NEAR_IP, FAR_IP = "10.201.0.1", "10.201.0.2"
BROKER_PORT, RELAY_PORT, DELAY_PORT = 5555, 6001, 6002
RELAY = Path(__file__).resolve().parent / "delay_relay.py"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def in_namespace(namespace: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


@contextmanager
def namespaces() -> Iterator[None]:
    """The two namespaces and the veth pair between them, removed afterwards."""
    for namespace in (NEAR, FAR):
        subprocess.run(["ip", "netns", "del", namespace], stderr=subprocess.DEVNULL, check=False)
    ip("netns", "add", NEAR)
    try:
        ip("netns", "add", FAR)
        ip("link", "add", "tnear", "type", "veth", "peer", "name", "tfar")
        ip("link", "set", "tnear", "netns", NEAR)
        ip("link", "set", "tfar", "netns", FAR)
        for namespace, device, address in ((NEAR, "tnear", NEAR_IP), (FAR, "tfar", FAR_IP)):
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", device)
            ip("-n", namespace, "link", "set", device, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
        yield
    finally:
        for namespace in (NEAR, FAR):
            subprocess.run(["ip", "netns", "del", namespace], check=False)


@contextmanager
def far_side(folder: str, hosted: bool) -> Iterator[str]:
    """Broker, dispatcher and two echo workers in the far namespace; the broker's endpoint.
    `hosted`: the dispatcher runs in the broker (`titanic broker --titanic`)."""
    endpoint = f"tcp://{FAR_IP}:{BROKER_PORT}"
    database = ["--db", f"sqlite:///{folder}/remote.db"]
    processes = [spawn(in_namespace(FAR, titanic_command(
        "broker", "--bind", endpoint, *(["--titanic", *database] if hosted else []))))]
    try:
        if not hosted:
            processes.append(spawn(in_namespace(FAR, titanic_command(
                "dispatcher", "--broker", endpoint, *database))))
        processes += [spawn(in_namespace(FAR, titanic_command("worker", "echo", "--broker",
                                                              endpoint))) for _ in range(2)]
        near = subprocess.run(in_namespace(NEAR, [sys.executable, "-c", (
            "import sys; from titanic.bench.tsp import wait_for_titanic; "
            "wait_for_titanic(sys.argv[1])"), endpoint]), check=False)
        if near.returncode:
            raise RuntimeError("titanic in the far namespace did not answer")
        yield endpoint
    finally:
        stop_all(processes)


def relay(port: int, delay_ms: float, target_port: int = BROKER_PORT) -> list[str]:
    return in_namespace(NEAR, [sys.executable, str(RELAY), f"127.0.0.1:{port}",
                               f"{FAR_IP}:{target_port}", str(delay_ms)])


def freelance_servers(delays: Sequence[float | None]) -> tuple[list[list[str]], list[list[str]]]:
    """For each path (None: the veth pair, else a relay's delay in ms), the endpoints clients
    use, and the commands running its servers and relays."""
    endpoints, commands = [], []
    for path, delay in enumerate(delays):
        used = []
        for k in range(FREELANCE_SERVERS):
            far_port = FREELANCE_PORT + 10 * path + k
            if delay is None:
                used.append(f"tcp://{FAR_IP}:{far_port}")
            else:
                near_port = RELAYED_FREELANCE_PORT + 10 * path + k
                used.append(f"tcp://127.0.0.1:{near_port}")
                commands.append(relay(near_port, delay, far_port))
            commands.append(in_namespace(FAR, titanic_command(
                "worker", "echo", "--bind", f"tcp://{FAR_IP}:{far_port}", "--advertise",
                used[-1])))
        endpoints.append(used)
    return endpoints, commands


def bench(endpoint: str, requests: int, sync_requests: int, depth: int,
          freelance: Sequence[str] = ()) -> dict[str, tuple[float, float]]:
    """`titanic bench --broker` from the near namespace: (rate, p50 ms) by load."""
    out = subprocess.run(in_namespace(NEAR, titanic_command(
        "bench", "--broker", endpoint, "--requests", str(requests),
        "--sync-requests", str(sync_requests), "--depth", str(depth),
        *(["--freelance", ",".join(freelance)] if freelance else []))),
        check=True, capture_output=True, text=True)
    figures: dict[str, tuple[float, float]] = {}
    for line in out.stdout.splitlines():
        # The table of titanic.bench.suite.format_rows: section, target, load, rate, p50, p99
        # in fixed columns.
        section, target, load = line[:8].strip(), line[9:39].strip(), line[40:76].strip()
        if section not in ("mdp", "titanic") or "inproc" in target:
            continue
        try:
            rate, p50 = float(line[77:86]), float(line[87:95])
        except ValueError:
            continue  # a note, not a figure
        figures[f"{target}: {load}"] = (rate, p50)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=0.5)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--sync-requests", type=int, default=1_000)
    parser.add_argument("--depth", type=int, default=32,
                        help="requests in flight for the pipelined MDP load")
    parser.add_argument("--hosted", action="store_true",
                        help="the dispatcher in the broker (titanic broker --titanic)")
    parser.add_argument("--freelance", action="store_true",
                        help="also the brokerless rows: freelance echo servers on every path")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("remote.py needs root (ip netns)", file=sys.stderr)
        return 2
    paths = {"veth": f"tcp://{FAR_IP}:{BROKER_PORT}",
             "relay, 0 ms": f"tcp://127.0.0.1:{RELAY_PORT}",
             f"relay, {args.delay_ms:g} ms each way": f"tcp://127.0.0.1:{DELAY_PORT}"}
    values: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
        stack.enter_context(namespaces())
        stack.enter_context(far_side(folder, args.hosted))
        relays = [spawn(relay(RELAY_PORT, 0.0)), spawn(relay(DELAY_PORT, args.delay_ms))]
        stack.callback(stop_all, relays)
        servers: list[list[str]] = [[] for _ in paths]
        if args.freelance:
            servers, commands = freelance_servers([None, 0.0, args.delay_ms])
            helpers = [spawn(command) for command in commands]
            stack.callback(stop_all, helpers)
        time.sleep(0.5)  # the relays' listening sockets
        for round_ in range(args.rounds):
            for (name, endpoint), used in zip(paths.items(), servers, strict=True):
                print(f"round {round_ + 1}: {name}", file=sys.stderr, flush=True)
                figures = bench(endpoint, args.requests, args.sync_requests, args.depth, used)
                for load, figure in figures.items():
                    values[(name, load)].append(figure)
    loads = list(dict.fromkeys(load for _, load in values))  # in the order measured
    names = list(paths)
    print("| load | " + " | ".join(names) + " | delayed / relay 0 ms |")
    print("|---|" + "---:|" * (len(names) + 1))
    for load in loads:
        cells, rates = [], []
        for name in names:
            got = values.get((name, load), [])
            rate = statistics.median(v[0] for v in got) if got else 0.0
            p50 = statistics.median(v[1] for v in got) if got else 0.0
            rates.append(rate)
            cells.append(f"{rate:,.0f}/s, p50 {p50:.3f} ms")
        ratio = f"{rates[2] / rates[1]:.2f}x" if rates[1] else "-"
        print(f"| {load} | " + " | ".join(cells) + f" | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
