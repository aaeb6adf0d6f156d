"""titanic.peer: the conversation between two sites, each a broker (or several) and the
dispatchers on one store.

Every dispatcher answers titanic.peer. A site joined to another asks it about once a second,
and each ask carries the asking site's own state, so capacity flows both ways in one round
trip: the ask is `site name`, `state`, then the UUIDs (of requests stored at the asked site)
whose replies the asking site has fetched and stored, for the asked site to close; the answer
is `200`, `state`. A state is one frame
holding a JSON object: the site's name, its store's identity, and per service served there
its live workers and the requests waiting for one (`{"site": "paris", "store": "668a...",
"services": {"echo": [4, 0]}}`). A malformed ask is answered `400` and a text, as TSP does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from titanic.errors import ProtocolError
from titanic.protocol.tsp import parse_uuid

SERVICE = b"titanic.peer"
#: titanic.reply for many requests at once: `uuid...` -> `200`, then per UUID, in order, the
#: number of frames of its titanic.reply answer and those frames.
REPLIES_SERVICE = b"titanic.replies"
#: The most UUIDs one titanic.replies call asks about.
MAX_REPLIES_ASKED = 1000
#: The longest site name accepted (it is shown in logs and metrics labels).
MAX_SITE_NAME = 64
_MAX_STATE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class SiteState:
    """What a site tells its peers: its name, its store's identity, and per service its live
    workers and the requests waiting for one (its capacity)."""

    site: str
    store: str = ""
    services: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def serves(self, service: str) -> bool:
        """At least one live worker of `service` there."""
        workers, _ = self.services.get(service, (0, 0))
        return workers > 0

    def encode(self) -> bytes:
        """The state frame."""
        return json.dumps({"site": self.site, "store": self.store,
                           "services": {name: [workers, queued] for name, (workers, queued)
                                        in sorted(self.services.items())}},
                          separators=(",", ":")).encode()


def check_site_name(name: str) -> str:
    """The name, or ValueError for an empty, too long or unprintable one, or one with `=` or
    `,` (which TITANIC_PEERS uses as separators)."""
    if not name or len(name) > MAX_SITE_NAME:
        raise ValueError(f"a site name has 1 to {MAX_SITE_NAME} characters: {name[:80]!r}")
    if not name.isprintable() or any(char in name for char in "=, "):
        raise ValueError(f"a site name has no spaces, '=' or ',': {name!r}")
    return name


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"a count is a natural number, not {value!r}")
    return value


def decode_state(frame: bytes) -> SiteState:
    """A state frame as a SiteState; ProtocolError if it is not one."""
    if len(frame) > _MAX_STATE_BYTES:
        raise ProtocolError("a titanic.peer state frame of over 1 MiB")
    try:
        raw = json.loads(frame)
    except ValueError as exc:
        raise ProtocolError("a titanic.peer state frame is not JSON") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("site"), str):
        raise ProtocolError("a titanic.peer state names no site")
    try:
        site = check_site_name(raw["site"])
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    store = raw.get("store", "")
    services = raw.get("services", {})
    if not isinstance(store, str) or not isinstance(services, dict):
        raise ProtocolError("a titanic.peer state's store is text and its services an object")
    counts: dict[str, tuple[int, int]] = {}
    for name, value in services.items():
        if not isinstance(value, list) or len(value) != 2:
            raise ProtocolError(f"service {name[:40]!r}: counts are [workers, queued]")
        counts[name] = (_count(value[0]), _count(value[1]))
    return SiteState(site, store, counts)


def build_ask(state: SiteState, closes: Sequence[str] = ()) -> list[bytes]:
    """An ask's body: the asking site's name, its state, and the UUIDs for the asked site to
    close."""
    return [state.site.encode(), state.encode(), *(request_id.encode() for request_id in closes)]


def parse_ask(body: Sequence[bytes]) -> tuple[SiteState, list[str]]:
    """The asking site's state and the UUIDs it asks to close; ProtocolError for a malformed
    ask."""
    if len(body) < 2:
        raise ProtocolError(f"a titanic.peer ask has at least 2 frames, not {len(body)}")
    state = decode_state(body[1])
    if state.site.encode() != body[0]:
        raise ProtocolError("a titanic.peer ask names two different sites")
    return state, [parse_uuid(frame) for frame in body[2:]]


def build_answer(state: SiteState) -> list[bytes]:
    """The answer to an ask: `200` and this site's state."""
    return [b"200", state.encode()]


def parse_answer(frames: Sequence[bytes]) -> SiteState:
    """The answering site's state; ProtocolError for anything but a `200` and a state."""
    if len(frames) != 2 or frames[0] != b"200":
        raise ProtocolError(f"titanic.peer answered {[frame[:40] for frame in frames[:2]]!r}")
    return decode_state(frames[1])


def build_replies_answer(answers: Sequence[Sequence[bytes]]) -> list[bytes]:
    """titanic.replies' answer: `200`, then each titanic.reply answer as its frame count and
    its frames."""
    frames = [b"200"]
    for answer in answers:
        frames.append(b"%d" % len(answer))
        frames.extend(answer)
    return frames


def parse_replies_answer(frames: Sequence[bytes], asked: int) -> list[list[bytes]]:
    """The `asked` titanic.reply answers in a titanic.replies answer; ProtocolError if it does
    not hold them."""
    if not frames or frames[0] != b"200":
        raise ProtocolError(f"titanic.replies answered {frames[:1]!r}")
    answers: list[list[bytes]] = []
    at = 1
    while at < len(frames):
        count = frames[at]
        if not count.isdigit() or int(count) < 1 or at + 1 + int(count) > len(frames):
            raise ProtocolError(f"titanic.replies: a bad frame count {count[:12]!r}")
        answers.append(list(frames[at + 1:at + 1 + int(count)]))
        at += 1 + int(count)
    if len(answers) != asked:
        raise ProtocolError(f"titanic.replies answered {len(answers)} of {asked} requests")
    return answers


def parse_peers(text: str | Sequence[str]) -> list[tuple[str, str]]:
    """`NAME=ENDPOINT` items (a sequence, or one comma-separated string) as (name, endpoint)
    pairs; ValueError for a bad or repeated one."""
    items = text.split(",") if isinstance(text, str) else [
        part for item in text for part in item.split(",")]
    peers: list[tuple[str, str]] = []
    for item in (item.strip() for item in items):
        if not item:
            continue
        name, equals, endpoint = item.partition("=")
        if not equals or "://" not in endpoint:
            raise ValueError(f"a peer is NAME=ENDPOINT (paris=tcp://10.0.0.2:5555): {item!r}")
        check_site_name(name)
        if any(name == known for known, _ in peers):
            raise ValueError(f"peer {name!r} is named twice")
        peers.append((name, endpoint))
    return peers
