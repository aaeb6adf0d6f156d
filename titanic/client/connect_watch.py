"""Whether a client socket reaches its broker, told from libzmq's monitor events at once.

A ZeroMQ `connect()` never fails by itself: with nothing listening at the endpoint, or a broker
that refuses our CURVE key, a request just waits for its timeout. The socket's monitor knows
within milliseconds: a connection attempt refused (EVENT_CONNECT_RETRIED while not connected),
or a security handshake refused (EVENT_HANDSHAKE_FAILED_AUTH, or a protocol failure such as a
mechanism mismatch). `ConnectWatch` follows those events; its `verdict()` says why the broker
cannot answer, or None while it may. Nothing listening counts once connections have been refused for
REFUSED_GRACE_S (a broker just started may bind a moment later); a refused connection to a
broker that was reached before is a broker restarting: callers wait for it as for a silent one
(`connected` tells). A handshake
cut short without detail (what a wrong server key looks like from the client) counts only when
it happens twice in a row: a broker restarting cuts one handshake too.
"""

from __future__ import annotations

import itertools
import struct
import time
from typing import Any

import zmq

from titanic.client.answers import Unreachable
from titanic.security.handshake import describe_handshake_failure

_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED
           | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_names = itertools.count()
#: How long connections must have been refused before nothing is taken to listen, in seconds.
REFUSED_GRACE_S = 0.25


#: A monitor message's first frame: the event (16 bits) and its value (32 bits), native order,
#: no padding (zmq_socket_monitor(3)). Parsed here: pyzmq's parser module imports asyncio.
_EVENT_FRAME = struct.Struct("=Hi")


def _monitor_event(frames: list[bytes]) -> tuple[int, int] | None:
    """The event and value of a monitor message; None for a message of another shape."""
    if len(frames) != 2 or len(frames[0]) != _EVENT_FRAME.size:
        return None
    kind, value = _EVENT_FRAME.unpack(frames[0])
    return int(kind), int(value)


class ConnectWatch:
    """One socket's connection to its broker, from the socket's monitor."""

    def __init__(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        self.endpoint = endpoint
        self._curve = sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        # Named by us: pyzmq's default name reuses the socket's descriptor number. The monitor
        # is a blocking socket even for an asyncio one: it is only ever read without waiting.
        address = f"inproc://titanic-connect-{id(self):x}-{next(_names)}"
        self._sock = sock
        sock.monitor(address, _EVENTS)
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(sock.context.underlying)
        self.monitor = context.socket(zmq.PAIR)
        self.monitor.linger = 0
        self.monitor.connect(address)
        self._refused_since: float | None = None  # connections refused since, no success
        self._handshake: Unreachable | None = None  # kept until a handshake succeeds
        self._cut_short: str | None = None  # a handshake lost without detail, for a timeout
        self._cuts = 0  # handshakes cut short in a row
        #: Whether the socket has been connected to its broker at least once.
        self.connected = False

    def verdict(self, *, final: bool = False) -> Unreachable | None:
        """Why the broker cannot answer now, after reading every event waiting; None while
        it is connected, connecting or may still answer. `final`: the wait is over, and a
        connection refused counts even within REFUSED_GRACE_S."""
        monitor = self.monitor
        while monitor.poll(0):
            event = _monitor_event(monitor.recv_multipart())
            if event is not None:
                self._take(*event)
        if self._handshake is not None:
            return self._handshake
        since = self._refused_since
        if since is not None and (final or time.monotonic() - since >= REFUSED_GRACE_S):
            return Unreachable(f"nothing listens at {self.endpoint} (connection refused): is "
                               "the broker running there?")
        return None

    def explanation(self) -> str | None:
        """What to add to a timeout: the verdict, or a handshake that was cut short."""
        verdict = self.verdict()
        return verdict.reason if verdict is not None else self._cut_short

    def _take(self, kind: int, value: int) -> None:
        if kind == zmq.EVENT_CONNECT_RETRIED:
            if self._refused_since is None:
                self._refused_since = time.monotonic()
        elif kind in (zmq.EVENT_CONNECTED, zmq.EVENT_DISCONNECTED):
            self._refused_since = None  # connected, or about to try again
            self.connected = True
        elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._handshake, self._cut_short, self._cuts = None, None, 0
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._cut_short = describe_handshake_failure(kind, value, curve=self._curve)
            self._cuts += 1
            if self._cuts >= 2:
                self._handshake = Unreachable(self._cut_short, handshake=True)
        else:
            self._handshake = Unreachable(describe_handshake_failure(kind, value,
                                                                     curve=self._curve),
                                          handshake=True)

    def close(self) -> None:
        """Stop the monitor, then close its socket; call it before the socket closes. A
        monitor socket closed while libzmq still reports to it can stall libzmq's I/O thread,
        and with it every socket of the context."""
        if not self._sock.closed:
            self._sock.disable_monitor()
        self.monitor.close(linger=0)
