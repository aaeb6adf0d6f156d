"""What a failed CURVE handshake means, told from libzmq's monitor events, for users to act on."""

from __future__ import annotations

import os

import zmq


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
