"""What a failed CURVE handshake means, told from libzmq's monitor events, for users to act on."""

from __future__ import annotations

import os

import zmq
from zmq.utils.monitor import parse_monitor_message

from titanic._zmq import SocketHook

#: Handshake events a client-side watch listens for.
_CLIENT_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                  | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def describe_handshake_failure(event: int, value: int, *, server: bool = False,
                               curve: bool = True) -> str:
    """What a failed-handshake monitor event means, in words a user can act on.

    `server`: seen by the broker (about a peer) rather than by a client (about the broker);
    `curve`: whether the client itself speaks CURVE.
    """
    if server:
        return _describe_for_broker(event, value)
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"the broker refused this CURVE key (ZAP status {value}): its public key is not "
                "in the broker's allowed folder for this endpoint")
    if not curve:
        return ("the broker broke off the handshake: it requires CURVE "
                "(give --curve-server-key and --curve-key)")
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "security mismatch: this client speaks CURVE and the broker does not"
    return ("the broker broke off the CURVE handshake: is --curve-server-key the broker's "
            "public key?")


def _describe_for_broker(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"CURVE key refused (ZAP status {value})"
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "a plaintext peer (no CURVE): security mechanism mismatch"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return f"the connection was lost during the security handshake ({_errno(value)})"
    if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "the CURVE handshake failed: the peer has the wrong server public key"
    return f"the security handshake failed (protocol error 0x{value:x})"


def _errno(value: int) -> str:
    try:
        return os.strerror(value)
    except ValueError:
        return f"error {value}"


class HandshakeWatch:
    """A socket hook that also monitors each socket's handshakes, to explain a silent broker.

    Use it as `configure_socket` on clients that share a context you own; `failure()` says why
    no handshake succeeded, and `close()` must run before that context is terminated.
    """

    def __init__(self, inner: SocketHook | None = None) -> None:
        self._inner = inner
        self._monitors: list[zmq.Socket[bytes]] = []
        self._succeeded = False
        self._failure: tuple[int, str] | None = None  # (how specific, description)

    def __call__(self, sock: zmq.Socket[bytes]) -> None:
        if self._inner is not None:
            self._inner(sock)
        # pyzmq's default address is named after the socket's descriptor, which a socket opened
        # after a close may reuse while the old monitor endpoint is still bound: name our own.
        address = f"inproc://titanic-handshake-watch-{id(self):x}-{len(self._monitors)}"
        self._monitors.append(sock.get_monitor_socket(_CLIENT_EVENTS, addr=address))

    def failure(self) -> str | None:
        """Why the handshakes failed, if some failed and none succeeded; else None."""
        for monitor in self._monitors:
            while monitor.poll(0):
                event = parse_monitor_message(monitor.recv_multipart())
                kind, value = int(event["event"]), int(event["value"])
                if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._succeeded = True
                    continue
                # A refused key says most; a mechanism mismatch next; a reconnection cut short
                # (NO_DETAIL) least: keep the most telling failure seen.
                rank = (2 if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH else
                        1 if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH else 0)
                if self._failure is None or rank > self._failure[0]:
                    self._failure = (rank, describe_handshake_failure(
                        kind, value, curve=self._inner is not None))
        if self._succeeded or self._failure is None:
            return None
        return self._failure[1]

    def close(self) -> None:
        """Close the monitor sockets."""
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()
