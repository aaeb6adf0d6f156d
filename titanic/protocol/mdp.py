"""7/MDP (MDP 0.1) and 18/MDP (MDP 0.2, and majortomo's variant of it): pure frame codecs.

Frames given to the parsers never include the ROUTER identity frame: the broker strips it first.
Every malformation a peer sends raises ProtocolError, and nothing else; asking a builder for
something its dialect does not have (a 7/MDP PARTIAL) raises UsageError.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple

from titanic.errors import ProtocolError, UsageError
from titanic.protocol.identity import IDENTITY_OPTION

Frames = list[bytes]

CLIENT_01 = b"MDPC01"
WORKER_01 = b"MDPW01"
CLIENT_02 = b"MDPC02"
WORKER_02 = b"MDPW02"
EMPTY = b""


class Dialect(enum.Enum):
    """Which Majordomo wire format a peer speaks."""

    MDP01 = "7/MDP"
    MDP02 = "18/MDP"
    MAJORTOMO = "majortomo"


class Command(enum.Enum):
    """Commands, independent of how each dialect numbers them."""

    READY = "READY"
    REQUEST = "REQUEST"
    PARTIAL = "PARTIAL"
    FINAL = "FINAL"
    HEARTBEAT = "HEARTBEAT"
    DISCONNECT = "DISCONNECT"


# Worker commands: 7/MDP numbers them 1..5 (REPLY is its FINAL and it has no PARTIAL);
# 18/MDP and majortomo's worker side 1..6.
_WORKER_CODES_01 = {
    Command.READY: b"\x01",
    Command.REQUEST: b"\x02",
    Command.FINAL: b"\x03",
    Command.HEARTBEAT: b"\x04",
    Command.DISCONNECT: b"\x05",
}
_WORKER_CODES_02 = {
    Command.READY: b"\x01",
    Command.REQUEST: b"\x02",
    Command.PARTIAL: b"\x03",
    Command.FINAL: b"\x04",
    Command.HEARTBEAT: b"\x05",
    Command.DISCONNECT: b"\x06",
}
_WORKER_COMMANDS_01 = {code: cmd for cmd, code in _WORKER_CODES_01.items()}
_WORKER_COMMANDS_02 = {code: cmd for cmd, code in _WORKER_CODES_02.items()}

# Client commands of 18/MDP as RFC 18 numbers them, and as majortomo does.
_CLIENT_CODES_02 = {Command.REQUEST: b"\x01", Command.PARTIAL: b"\x02", Command.FINAL: b"\x03"}
_CLIENT_CODES_MAJORTOMO = {
    Command.REQUEST: b"\x02", Command.PARTIAL: b"\x03", Command.FINAL: b"\x04"
}
_CLIENT_COMMANDS_02 = {code: cmd for cmd, code in _CLIENT_CODES_02.items()}
_CLIENT_COMMANDS_MAJORTOMO = {code: cmd for cmd, code in _CLIENT_CODES_MAJORTOMO.items()}


class ClientRequest(NamedTuple):
    """A client's REQUEST, as the broker receives it."""

    dialect: Dialect
    service: bytes
    body: Frames


class WorkerMessage(NamedTuple):
    """A worker command, either direction. `address` is the service for READY, else the client;
    READY's `body` holds its options (titanic's IDENTITY_OPTION, or nothing)."""

    dialect: Dialect
    command: Command
    address: bytes
    body: Frames


class ClientReply(NamedTuple):
    """A reply part as a client receives it; `service` is empty where the dialect omits it."""

    final: bool
    service: bytes
    body: Frames


def _worker_codes(dialect: Dialect) -> dict[Command, bytes]:
    return _WORKER_CODES_01 if dialect is Dialect.MDP01 else _WORKER_CODES_02


def _worker_prefix(dialect: Dialect) -> Frames:
    if dialect is Dialect.MDP01:
        return [EMPTY, WORKER_01]
    if dialect is Dialect.MDP02:
        return [WORKER_02]
    return [EMPTY, WORKER_02]


def _describe(frame: bytes) -> str:
    shown = frame[:16]
    return repr(shown) + ("..." if len(frame) > 16 else "")


# ---------------------------------------------------------------------------------------------
# Broker side: what arrives from a peer.


def parse_peer_message(frames: Sequence[bytes]) -> ClientRequest | WorkerMessage:
    """Parse a message from a client or worker (identity frame already removed)."""
    if not frames:
        raise ProtocolError("empty message")
    first = frames[0]
    if first == EMPTY:
        if len(frames) < 2:
            raise ProtocolError("message has only the empty delimiter")
        header = frames[1]
        if header == CLIENT_01:
            return _parse_client_01(frames)
        if header == WORKER_01:
            return _parse_worker(frames, 2, Dialect.MDP01, _WORKER_COMMANDS_01)
        if header == CLIENT_02:
            return _parse_client_02(frames, 2, Dialect.MAJORTOMO, _CLIENT_COMMANDS_MAJORTOMO)
        if header == WORKER_02:
            return _parse_worker(frames, 2, Dialect.MAJORTOMO, _WORKER_COMMANDS_02)
        raise ProtocolError(f"unknown protocol header {_describe(header)}")
    if first == CLIENT_02:
        return _parse_client_02(frames, 1, Dialect.MDP02, _CLIENT_COMMANDS_02)
    if first == WORKER_02:
        return _parse_worker(frames, 1, Dialect.MDP02, _WORKER_COMMANDS_02)
    raise ProtocolError(f"unknown protocol header {_describe(first)}")


def _parse_client_01(frames: Sequence[bytes]) -> ClientRequest:
    if len(frames) < 3:
        raise ProtocolError("7/MDP client request has no service frame")
    # An empty service name is the broker's to refuse with an answer, not a malformed frame.
    return ClientRequest(Dialect.MDP01, frames[2], list(frames[3:]))


def _parse_client_02(
    frames: Sequence[bytes], at: int, dialect: Dialect, commands: dict[bytes, Command]
) -> ClientRequest:
    if len(frames) < at + 2:
        raise ProtocolError(f"{dialect.value} client message is truncated")
    command = commands.get(frames[at])
    if command is not Command.REQUEST:
        raise ProtocolError(f"{dialect.value} client sent command {_describe(frames[at])}")
    return ClientRequest(dialect, frames[at + 1], list(frames[at + 2 :]))


def _parse_worker(
    frames: Sequence[bytes], at: int, dialect: Dialect, commands: dict[bytes, Command]
) -> WorkerMessage:
    if len(frames) <= at:
        raise ProtocolError(f"{dialect.value} worker message has no command")
    command = commands.get(frames[at])
    if command is None:
        raise ProtocolError(f"unknown {dialect.value} worker command {_describe(frames[at])}")
    rest = frames[at + 1 :]
    if command is Command.READY:
        if not rest or not rest[0] or len(rest) > 2:
            raise ProtocolError("READY must carry exactly one non-empty service name")
        if len(rest) == 2 and rest[1] != IDENTITY_OPTION:
            raise ProtocolError(f"unknown READY option {_describe(rest[1])}")
        return WorkerMessage(dialect, command, rest[0], list(rest[1:]))
    if rest and (command is Command.HEARTBEAT
                 or (command is Command.DISCONNECT and len(rest) > 1)):
        raise ProtocolError(f"{command.value} carries {len(rest)} unexpected frames")
    if command in (Command.HEARTBEAT, Command.DISCONNECT):
        # A DISCONNECT may carry one frame saying why (titanic.protocol.identity).
        return WorkerMessage(dialect, command, EMPTY, list(rest))
    return WorkerMessage(dialect, command, *_parse_addressed(rest, command))


def _parse_addressed(rest: Sequence[bytes], command: Command) -> tuple[bytes, Frames]:
    """Split `client, "", body...` as REQUEST, PARTIAL and FINAL carry it."""
    if len(rest) < 2:
        raise ProtocolError(f"{command.value} is missing the client address or delimiter")
    if not rest[0]:
        raise ProtocolError(f"{command.value} has an empty client address")
    if rest[1] != EMPTY:
        raise ProtocolError(f"{command.value} has no empty delimiter after the client address")
    return rest[0], list(rest[2:])


# ---------------------------------------------------------------------------------------------
# Worker side: what the broker sends to a worker, and what a worker sends.


def parse_worker_inbound(dialect: Dialect, frames: Sequence[bytes]) -> WorkerMessage:
    """Parse a broker-to-worker message (REQUEST, HEARTBEAT or DISCONNECT) on a DEALER socket."""
    message = _parse_worker_in_dialect(dialect, frames)
    if message.command not in (Command.REQUEST, Command.HEARTBEAT, Command.DISCONNECT):
        raise ProtocolError(f"broker sent worker command {message.command.value}")
    return message


def _parse_worker_in_dialect(dialect: Dialect, frames: Sequence[bytes]) -> WorkerMessage:
    if dialect is Dialect.MDP02:
        if not frames or frames[0] != WORKER_02:
            raise ProtocolError("expected an MDPW02 header")
        return _parse_worker(frames, 1, dialect, _WORKER_COMMANDS_02)
    header = WORKER_01 if dialect is Dialect.MDP01 else WORKER_02
    if len(frames) < 2 or frames[0] != EMPTY or frames[1] != header:
        raise ProtocolError(f"expected an empty delimiter and {header.decode()} header")
    commands = _WORKER_COMMANDS_01 if dialect is Dialect.MDP01 else _WORKER_COMMANDS_02
    return _parse_worker(frames, 2, dialect, commands)


def build_worker(dialect: Dialect, command: Command, *frames: bytes) -> Frames:
    """Any worker command in a dialect; for REQUEST/PARTIAL/FINAL pass client, then body frames."""
    message = worker_command_prefix(dialect, command)
    if command in (Command.REQUEST, Command.PARTIAL, Command.FINAL):
        message.append(frames[0])
        message.append(EMPTY)
        message.extend(frames[1:])
    else:
        message.extend(frames)
    return message


def worker_command_prefix(dialect: Dialect, command: Command) -> Frames:
    """The frames a worker command starts with in a dialect, up to and including its code."""
    code = _worker_codes(dialect).get(command)
    if code is None:
        raise UsageError(f"{dialect.value} has no worker command {command.value}")
    return [*_worker_prefix(dialect), code]


class WorkerCodec:
    """A worker's per-request frames in one dialect, with the fixed prefixes built once.

    `request()` recognises a well-formed REQUEST with a few comparisons; anything else (a
    HEARTBEAT, a DISCONNECT, a malformed message) is left to `parse_worker_inbound`.
    """

    __slots__ = ("_final", "_partial", "_request", "_request_len", "dialect")

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._request = worker_command_prefix(dialect, Command.REQUEST)
        self._request_len = len(self._request)
        self._final = worker_command_prefix(dialect, Command.FINAL)
        self._partial = (None if Command.PARTIAL not in _worker_codes(dialect)
                         else worker_command_prefix(dialect, Command.PARTIAL))

    def request(self, frames: Sequence[bytes]) -> tuple[bytes, Frames] | None:
        """(client, body) if `frames` is a well-formed REQUEST, else None."""
        at = self._request_len
        if (len(frames) > at + 1 and frames[at] and frames[at + 1] == EMPTY
                and frames[:at] == self._request):
            return frames[at], list(frames[at + 2:])
        return None

    def request_with_caller(self, frames: Sequence[bytes]
                            ) -> tuple[bytes, bytes | None, Frames] | None:
        """(client, caller frame or None, body) if `frames` is a well-formed REQUEST whose
        envelope may hold the broker's caller frame (titanic.protocol.identity), else None."""
        plain = self.request(frames)
        if plain is not None:
            return plain[0], None, plain[1]
        at = self._request_len
        if (len(frames) > at + 2 and frames[at] and frames[at + 1] and frames[at + 2] == EMPTY
                and frames[:at] == self._request):
            return frames[at], frames[at + 1], list(frames[at + 3:])
        return None

    def reply(self, client: bytes, body: Sequence[bytes], *, final: bool = True) -> Frames:
        """FINAL (7/MDP REPLY) or, in 18/MDP dialects, PARTIAL, for a client."""
        prefix = self._final if final else self._partial
        if prefix is None:
            raise UsageError(f"{self.dialect.value} has no worker command PARTIAL")
        return [*prefix, client, EMPTY, *body]


def build_ready(dialect: Dialect, service: bytes, *, identities: bool = False) -> Frames:
    """READY for a service; `identities` asks the broker for each request's caller."""
    if identities:
        return build_worker(dialect, Command.READY, service, IDENTITY_OPTION)
    return build_worker(dialect, Command.READY, service)


def build_heartbeat(dialect: Dialect) -> Frames:
    """HEARTBEAT, either direction."""
    return build_worker(dialect, Command.HEARTBEAT)


def build_disconnect(dialect: Dialect) -> Frames:
    """DISCONNECT, either direction."""
    return build_worker(dialect, Command.DISCONNECT)


def build_worker_request(dialect: Dialect, client: bytes, body: Sequence[bytes]) -> Frames:
    """Broker to worker: REQUEST for a client."""
    return build_worker(dialect, Command.REQUEST, client, *body)


def build_worker_reply(
    dialect: Dialect, client: bytes, body: Sequence[bytes], *, final: bool = True
) -> Frames:
    """Worker to broker: FINAL (7/MDP REPLY) or, in 18/MDP dialects, PARTIAL."""
    return build_worker(dialect, Command.FINAL if final else Command.PARTIAL, client, *body)


# ---------------------------------------------------------------------------------------------
# Client side: requests a client sends, and replies the broker sends back.


def build_client_request(dialect: Dialect, service: bytes, body: Sequence[bytes]) -> Frames:
    """A client REQUEST as sent on a DEALER socket (7/MDP's empty delimiter included);
    TypeError for a service that is not bytes, before anything is sent."""
    if not isinstance(service, bytes):
        raise TypeError(f"the service is {type(service).__name__}: a service name is str or "
                        "bytes")
    if dialect is Dialect.MDP01:
        return [EMPTY, CLIENT_01, service, *body]
    if dialect is Dialect.MDP02:
        return [CLIENT_02, _CLIENT_CODES_02[Command.REQUEST], service, *body]
    return [EMPTY, CLIENT_02, _CLIENT_CODES_MAJORTOMO[Command.REQUEST], service, *body]


def build_client_reply(
    dialect: Dialect, service: bytes, body: Sequence[bytes], *, final: bool = True
) -> Frames:
    """Broker to client: a reply part. 7/MDP has only whole replies, so `final` must be true."""
    if dialect is Dialect.MDP01:
        if not final:
            raise UsageError("7/MDP clients take no partial replies")
        return [EMPTY, CLIENT_01, service, *body]
    command = Command.FINAL if final else Command.PARTIAL
    if dialect is Dialect.MDP02:
        return [CLIENT_02, _CLIENT_CODES_02[command], service, *body]
    return [EMPTY, CLIENT_02, _CLIENT_CODES_MAJORTOMO[command], *body]


def parse_client_reply(dialect: Dialect, frames: Sequence[bytes]) -> ClientReply:
    """Parse a broker-to-client reply part received on a DEALER socket."""
    if dialect is Dialect.MDP01:
        if len(frames) < 3 or frames[0] != EMPTY or frames[1] != CLIENT_01:
            raise ProtocolError("expected an empty delimiter, MDPC01 and a service frame")
        return ClientReply(True, frames[2], list(frames[3:]))
    if dialect is Dialect.MDP02:
        if len(frames) < 3 or frames[0] != CLIENT_02:
            raise ProtocolError("expected MDPC02, a command and a service frame")
        command = _CLIENT_COMMANDS_02.get(frames[1])
        if command not in (Command.PARTIAL, Command.FINAL):
            raise ProtocolError(f"unexpected 18/MDP client command {_describe(frames[1])}")
        return ClientReply(command is Command.FINAL, frames[2], list(frames[3:]))
    if len(frames) < 3 or frames[0] != EMPTY or frames[1] != CLIENT_02:
        raise ProtocolError("expected an empty delimiter, MDPC02 and a command")
    command = _CLIENT_COMMANDS_MAJORTOMO.get(frames[2])
    if command not in (Command.PARTIAL, Command.FINAL):
        raise ProtocolError(f"unexpected majortomo client command {_describe(frames[2])}")
    return ClientReply(command is Command.FINAL, EMPTY, list(frames[3:]))
