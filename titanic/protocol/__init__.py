"""Pure wire codecs: 7/MDP, 18/MDP, 8/MMI and 9/TSP. Nothing here imports zmq."""

from titanic.protocol.mdp import (
    ClientReply,
    ClientRequest,
    Command,
    Dialect,
    WorkerCodec,
    WorkerMessage,
    build_client_reply,
    build_client_request,
    build_worker,
    build_worker_reply,
    build_worker_request,
    parse_client_reply,
    parse_peer_message,
    parse_worker_inbound,
)

__all__ = [
    "ClientReply",
    "ClientRequest",
    "Command",
    "Dialect",
    "WorkerCodec",
    "WorkerMessage",
    "build_client_reply",
    "build_client_request",
    "build_worker",
    "build_worker_reply",
    "build_worker_request",
    "parse_client_reply",
    "parse_peer_message",
    "parse_worker_inbound",
]
