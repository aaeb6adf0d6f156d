"""Where a lone titanic.request's time goes, on SQLite: one producer, one request at a time.

A broker (and, with --workers, echo workers) run as processes; the dispatcher runs here, on a
thread, with a few of its functions wrapped to note the time: its socket wait returning, the
planner's store exchange starting and ending, BEGIN IMMEDIATE and COMMIT, and the answer
sent. A client process submits --requests titanic.requests one at a time (after 300 to warm
up) and notes when each was sent and answered; with workers it then times as many round trips
to an echo worker, the floor's first half. Both processes read the same monotonic clock, so
each request's time splits into the hop to the dispatcher, the dispatcher's own steps, and the
hop back. Prints the median and mean of each step.

With several `--forward-linger` values the dispatcher takes them in turn, each for a block of
100 requests, and each value gets its own column: an A/B comparison within one run, so that
the machine's changes of speed fall on both alike.

    python benchmarks/lone_request.py [--requests 2000] [--workers 2] [--forward-linger S ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from systems import dispatcher_on_thread

from titanic import _zmq
from titanic.dispatch.planner import Planner
from titanic.dispatch.settings import DispatcherSettings
from titanic.dispatch.standalone import Dispatcher
from titanic.store import open_store, sqlite_turn

#: Requests the client sends before those it times.
WARM_UP = 300
#: With several --forward-linger values: requests in a row under each.
BLOCK = 100

CLIENT = """
import json, sys, time
from titanic.client import Client
endpoint, requests, echo = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
payload = b"x" * 100
client = Client(endpoint, timeout=10, retries=0)
for _ in range(int(sys.argv[4])):
    client.request(b"titanic.request", b"echo", payload)
trips = []
for _ in range(requests):
    sent = time.monotonic()
    client.request(b"titanic.request", b"echo", payload)
    trips.append((sent, time.monotonic()))
echoes = []
for _ in range(requests if echo else 0):
    sent = time.monotonic()
    client.request(b"echo", payload)
    echoes.append(time.monotonic() - sent)
client.close()
print(json.dumps({"trips": trips, "echoes": echoes}))
"""

STEPS = ("to the dispatcher (client sent, dispatcher's wait returned)",
         "dispatcher: read and planned, up to its store exchange",
         "store: before BEGIN IMMEDIATE (rows, connection)",
         "store: BEGIN IMMEDIATE",
         "store: the statements",
         "store: COMMIT (the fsync)",
         "store: after COMMIT",
         "dispatcher: exchange done to answer sent",
         "back to the client (answer sent, client has it)",
         "total")


class Marks:
    """Times noted on the dispatcher's thread, by what happened."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def note(self, what: str) -> None:
        self.events.append((what, time.monotonic()))

    def wrap(self, owner: Any, name: str, before: str | None, after: str | None) -> None:
        """Note `before` and `after` around every call of owner.name."""
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                self.note(before)
            result = original(*args, **kwargs)
            if after:
                self.note(after)
            return result

        setattr(owner, name, wrapped)

    def timed_transactions(self) -> Callable[[Any], Any]:
        """sqlite_turn.immediate, noting BEGIN and COMMIT."""
        note = self.note

        @contextmanager
        def immediate(raw: Any) -> Iterator[Any]:
            note("begin")
            raw.execute("BEGIN IMMEDIATE")
            note("begun")
            try:
                yield raw
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise
            note("commit")
            raw.execute("COMMIT")
            note("committed")

        return immediate


def split(events: Sequence[tuple[str, float]], sent: float, answered: float
          ) -> list[float] | None:
    """One request's steps (seconds, STEPS order) from the events between its sending and its
    answer; None unless they show one wait, one exchange with one transaction, one answer."""
    inside = [(what, at) for what, at in events if sent < at < answered]
    answers = [i for i, (what, _) in enumerate(inside) if what == "answered"]
    if len(answers) != 1:
        return None
    before_answer = inside[:answers[0] + 1]
    starts = [i for i, (what, _) in enumerate(before_answer) if what == "exchange"]
    if not starts:
        return None
    turn = before_answer[starts[-1]:]
    woke = [at for what, at in before_answer[:starts[-1]] if what == "woke"]
    at = dict(turn)
    if not woke or len(turn) != 7 or set(at) != {"exchange", "begin", "begun", "commit",
                                                  "committed", "exchanged", "answered"}:
        return None
    marks = [sent, woke[-1], at["exchange"], at["begin"], at["begun"], at["commit"],
             at["committed"], at["exchanged"], at["answered"], answered]
    return [later - earlier for earlier, later in pairwise(marks)] + [answered - sent]


def take_turns(values: Sequence[float]) -> None:
    """The planner's forward_linger switched among `values`, BLOCK submissions each."""
    original = Planner.turn
    submitted = 0

    def turn(planner: Planner, submits: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal submitted
        if submits:
            value = values[submitted // BLOCK % len(values)]
            if planner.settings.forward_linger != value:
                planner.settings = replace(planner.settings, forward_linger=value)
            submitted += len(submits)
        return original(planner, submits, *args, **kwargs)

    Planner.turn = turn  # type: ignore[method-assign,assignment]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--forward-linger", type=float, nargs="+", metavar="S",
                        help="the dispatcher's forward_linger (default: its default); several "
                             f"values: taken in turn, {BLOCK} requests each")
    args = parser.parse_args(argv)
    values: list[float] = args.forward_linger or [DispatcherSettings().forward_linger]
    take_turns(values)
    marks = Marks()
    marks.wrap(_zmq.SocketSet, "wait", None, "woke")
    marks.wrap(Planner, "_exchange", "exchange", "exchanged")
    marks.wrap(Dispatcher, "_answer", None, "answered")
    sqlite_turn.immediate = marks.timed_transactions()  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as folder:
        store = open_store(f"sqlite:///{Path(folder) / 'titanic.db'}")
        try:
            with dispatcher_on_thread(store, args.workers) as endpoint:
                client = subprocess.run(
                    [sys.executable, "-c", CLIENT, endpoint, str(args.requests),
                     "1" if args.workers else "0", str(WARM_UP)],
                    capture_output=True, text=True, check=True, timeout=600)
        finally:
            store.close_store()
    measured = json.loads(client.stdout)
    events = list(marks.events)
    columns: list[list[list[float]]] = [[] for _ in values]
    for number, (sent, answered) in enumerate(measured["trips"], start=WARM_UP):
        # The first few of a block may still carry the previous value's forwarding.
        if len(values) > 1 and number % BLOCK < 5:
            continue
        if (steps := split(events, sent, answered)) is not None:
            columns[number // BLOCK % len(values)].append(steps)
    print(f"{sum(map(len, columns))} of {len(measured['trips'])} requests split into steps "
          f"({args.workers} echo workers running), p50 and mean in µs")
    print(f"  {'forward_linger':58}" + "".join(f"{value:>19g}" for value in values))
    for index, step in enumerate(STEPS):
        cells = []
        for requests in columns:
            taken = [steps[index] * 1e6 for steps in requests]
            cells.append(f"{statistics.median(taken):9.0f}{statistics.mean(taken):10.0f}")
        print(f"  {step:58}" + "".join(cells))
    if measured["echoes"]:
        print(f"  {'floor: a round trip to an echo worker, p50':58}"
              f"{statistics.median(measured['echoes']) * 1e6:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
