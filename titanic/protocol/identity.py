"""Who sent a request, as the broker authenticated it: titanic's extension of 7/MDP and 18/MDP.

With CURVE, ZAP tells the broker each connection's public key. A worker that is itself trusted
(its key in the broker's admin folder) may ask for it by adding `IDENTITY_OPTION` to its READY;
the broker then puts one more frame into the envelope of every REQUEST it sends that worker:

    REQUEST: client address, caller, "", body...

The caller frame is `client <Z85 key>` or `admin <Z85 key>`. It sits before the empty delimiter,
where only the broker writes: a client's own frames all come after it, so no client can set or
change it. Workers that did not ask never see the frame, and a REQUEST without it (a broker
without CURVE, or one that does not know the option) means "caller unknown".

A worker that asks without an admin key is refused: the broker answers its READY with a
DISCONNECT carrying one frame, `IDENTITY_REFUSED`, so that it stops and says why instead of
registering again and again.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanic.errors import ProtocolError

#: The frame a worker adds after the service name in READY to be told who sends each request.
IDENTITY_OPTION = b"titanic:identity/1"
#: The frame of the DISCONNECT that refuses IDENTITY_OPTION to a key not in the admin folder.
IDENTITY_REFUSED = b"titanic:identity/1 refused"

_CLIENT = b"client "
_ADMIN = b"admin "
_Z85_KEY_LENGTH = 40


@dataclass(frozen=True, slots=True)
class Caller:
    """A request's sender as the broker authenticated it: its CURVE public key (Z85), and
    whether that key is in the broker's admin folder."""

    key: str
    admin: bool = False


def caller_frame(key: bytes, *, admin: bool) -> bytes:
    """The envelope frame naming a caller (`key`: its Z85 public key)."""
    return (_ADMIN if admin else _CLIENT) + key


def parse_caller_frame(frame: bytes) -> Caller:
    """The Caller a broker's envelope frame names; ProtocolError if it is not one."""
    if frame.startswith(_ADMIN):
        key, admin = frame[len(_ADMIN):], True
    elif frame.startswith(_CLIENT):
        key, admin = frame[len(_CLIENT):], False
    else:
        raise ProtocolError("caller frame is neither 'client <key>' nor 'admin <key>'")
    if len(key) != _Z85_KEY_LENGTH:
        raise ProtocolError(f"caller key of {len(key)} bytes, not a 40-character Z85 key")
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError("caller key is not ASCII") from exc
    return Caller(text, admin)
