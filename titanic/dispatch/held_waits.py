"""`titanic.wait`: a titanic.reply held until its request is no longer pending, without I/O.

A titanic extension beside 9/TSP. `titanic.wait` takes `uuid, milliseconds` and answers exactly
as `titanic.reply` does, but a request still pending is not answered at once: the answer waits
until the request's reply is stored (or it fails, expires or is closed), or until the given time
has passed (at most MAX_HOLD_S), and then says where the request stands. A client that knows the
service (8/MMI says whether a broker has it) hears of its reply when it is stored instead of at
its next poll; plain clients keep polling `titanic.reply` as 9/TSP says.

The follow form, `uuid, milliseconds, after`, follows a streamed reply: it is answered with the
parts numbered after `after` and whether the request is done (dispatch.services.handle_follow),
at once when there are such parts or the request has finished, else held like a wait until a
part is stored (`settle()`'s `progressed`), the request finishes, or the time is up (then
`200, pending` and no part).

`HeldWaits` keeps the held waits of one dispatcher: `hold()` one, `finished()` when requests'
replies are stored by this dispatcher, `due()` when their time is up or a request stored by
another dispatcher on the same store is to be looked at again (every RECHECK_S). Who is waiting
(a connection and address, a broker's local request) is the caller's business: a `key`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable
from typing import NamedTuple

from titanic.dispatch.services import handle_follow, handle_reply
from titanic.errors import ProtocolError
from titanic.protocol.identity import Caller
from titanic.protocol.mdp import Frames
from titanic.protocol.tsp import Status, parse_uuid
from titanic.store import Store

#: The longest a wait is held, in seconds, whatever the client asks.
MAX_HOLD_S = 10.0
#: How often a held wait's request is read again from the store, in seconds: a reply stored by
#: another dispatcher on the same store is found within this.
RECHECK_S = 0.25


class Held(NamedTuple):
    """A held wait: who waits, for which request, and whether its time is up."""

    key: Hashable
    request_id: str
    last: bool


def parse_hold(body: list[bytes]) -> tuple[bytes, float, int | None] | None:
    """A titanic.wait body, `uuid, milliseconds` or the follow form `uuid, milliseconds,
    after`, as (uuid frame, seconds to hold, at most MAX_HOLD_S, the part number followed
    from or None); None if it is neither."""
    if len(body) not in (2, 3) or not body[1].isdigit() or len(body[1]) > 9:
        return None
    after = None
    if len(body) == 3:
        if not body[2].isdigit() or len(body[2]) > 9:
            return None
        after = int(body[2])
    return body[0], min(MAX_HOLD_S, int(body[1]) / 1000), after


class HeldWaits:
    """The titanic.wait requests held by one dispatcher."""

    def __init__(self, recheck: float = RECHECK_S) -> None:
        self._recheck = recheck
        self._by_request: dict[str, dict[Hashable, float]] = {}  # request -> key -> deadline
        # (when to look again, sequence, key, request): stale entries are skipped.
        self._schedule: list[tuple[float, int, Hashable, str]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_request.values())

    def hold(self, key: Hashable, request_id: str, now: float, seconds: float) -> None:
        """Hold `key`'s wait for `request_id` until `seconds` from now at the latest."""
        deadline = now + seconds
        self._by_request.setdefault(request_id, {})[key] = deadline
        self._push(key, request_id, min(deadline, now + self._recheck))

    def finished(self, request_ids: Iterable[str]) -> list[Held]:
        """The waits to answer now, their requests' replies just stored (or failed)."""
        done: list[Held] = []
        for request_id in request_ids:
            keys = self._by_request.pop(request_id, None)
            if keys:
                done.extend(Held(key, request_id, True) for key in keys)
        return done

    def progressed(self, request_ids: Iterable[str], wanted: Callable[[Hashable], bool]
                   ) -> list[Held]:
        """The waits of `wanted` keys to answer now, their requests' streamed replies having
        gained parts."""
        done: list[Held] = []
        for request_id in request_ids:
            keys = [key for key in self._by_request.get(request_id, ()) if wanted(key)]
            for key in keys:
                self._forget(key, request_id)
                done.append(Held(key, request_id, True))
        return done

    def due(self, now: float) -> list[Held]:
        """The waits to look at now: their time is up (`last`: answer whatever the state), or
        their request is to be read again (answer unless it is still pending, then `keep()`
        them)."""
        found: list[Held] = []
        schedule = self._schedule
        while schedule and schedule[0][0] <= now:
            _, _, key, request_id = heapq.heappop(schedule)
            deadline = self._by_request.get(request_id, {}).get(key)
            if deadline is None:
                continue  # answered already
            last = deadline <= now
            if last:
                self._forget(key, request_id)
            found.append(Held(key, request_id, last))
        return found

    def keep(self, held: Held, now: float) -> None:
        """A wait looked at by `due()` is still pending: look again later."""
        deadline = self._by_request.get(held.request_id, {}).get(held.key)
        if deadline is not None:
            self._push(held.key, held.request_id, min(deadline, now + self._recheck))

    def answered(self, held: Held) -> None:
        """A wait looked at by `due()` was answered: forget it."""
        self._forget(held.key, held.request_id)

    def drop(self, keys: Iterable[Hashable]) -> list[Held]:
        """Forget the waits of these keys (their connection is gone); those dropped."""
        gone = set(keys)
        dropped: list[Held] = []
        for request_id, waiting in list(self._by_request.items()):
            for key in [key for key in waiting if key in gone]:
                dropped.append(Held(key, request_id, True))
                self._forget(key, request_id)
        return dropped

    def next_wake(self) -> float | None:
        """When `due()` has something to give next, if ever."""
        schedule = self._schedule
        while schedule:
            when, _, key, request_id = schedule[0]
            if key in self._by_request.get(request_id, {}):
                return when
            heapq.heappop(schedule)
        return None

    def _push(self, key: Hashable, request_id: str, when: float) -> None:
        heapq.heappush(self._schedule, (when, next(self._sequence), key, request_id))

    def _forget(self, key: Hashable, request_id: str) -> None:
        waiting = self._by_request.get(request_id)
        if waiting is not None:
            waiting.pop(key, None)
            if not waiting:
                del self._by_request[request_id]


#: How a dispatcher's loop sends an answer to a waiting client: (who, the answer's frames).
Answer = Callable[[Hashable, Frames], None]
_PENDING = str(Status.PENDING.value).encode()


class WaitDesk:
    """titanic.wait served from a store: answered at once unless the request is pending, else
    held until it finishes (`settle()` with what a turn finished) or its time is up."""

    def __init__(self, store: Store, answer: Answer) -> None:
        self.store = store
        self._answer = answer
        self.waits = HeldWaits()
        self._callers: dict[Hashable, Caller | None] = {}
        self._follows: dict[Hashable, int] = {}  # held follows: the part number after which

    def take(self, key: Hashable, body: Frames, caller: Caller | None, now: float) -> None:
        """A titanic.wait request from `key`: answered now, or held."""
        parsed = parse_hold(body)
        if parsed is None:
            self._answer(key, Status.UNKNOWN.answer(
                "bad request: titanic.wait takes a UUID and a number of milliseconds"))
            return
        uuid_frame, seconds, after = parsed
        if after is None:
            current = handle_reply(self.store, [uuid_frame], caller)
        else:
            current = handle_follow(self.store, uuid_frame, after, caller)
        if not _nothing_yet(current, after) or seconds <= 0:
            self._answer(key, current)
            return
        try:
            request_id = parse_uuid(uuid_frame)
        except ProtocolError:  # handle_reply would not have said pending
            self._answer(key, current)
            return
        self._callers[key] = caller
        if after is not None:
            self._follows[key] = after
        self.waits.hold(key, request_id, now, seconds)

    def settle(self, finished: Iterable[str], now: float,
               progressed: Iterable[str] = ()) -> None:
        """Answer the waits whose requests finished in this turn, the follows of those whose
        streamed replies gained parts, and those due now."""
        for held in self.waits.finished(finished):
            self._send(held)
        if self._follows:
            for held in self.waits.progressed(progressed, self._follows.__contains__):
                self._send(held)
        for held in self.waits.due(now):
            current = self._current(held)
            if held.last or not _nothing_yet(current, self._follows.get(held.key)):
                self.waits.answered(held)
                self._send(held, current)
            else:
                self.waits.keep(held, now)

    def release(self, keys: Iterable[Hashable]) -> None:
        """Answer these keys' held waits now, with their requests' state."""
        for held in self.waits.drop(keys):
            self._send(held)

    def answer_all(self) -> None:
        """Answer every held wait with its request's state now (the dispatcher stops)."""
        self.release(list(self._callers))

    def next_wake(self) -> float | None:
        """When `settle()` has something to do without a finished request."""
        return self.waits.next_wake()

    def _current(self, held: Held) -> Frames:
        caller = self._callers.get(held.key)
        after = self._follows.get(held.key)
        if after is not None:
            return handle_follow(self.store, held.request_id.encode(), after, caller)
        return handle_reply(self.store, [held.request_id.encode()], caller)

    def _send(self, held: Held, answer: Frames | None = None) -> None:
        self._answer(held.key, answer if answer is not None else self._current(held))
        self._callers.pop(held.key, None)
        self._follows.pop(held.key, None)


_NOTHING_FOLLOWED = [str(Status.OK.value).encode(), b"pending"]


def _nothing_yet(answer: Frames, after: int | None) -> bool:
    """Whether an answer says only that the request is still pending (for a follow: with no
    part after `after`), so that a wait is held."""
    if after is None:
        return answer[0] == _PENDING
    return answer == _NOTHING_FOLLOWED
