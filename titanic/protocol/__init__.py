"""Pure wire codecs: 7/MDP, 18/MDP, 8/MMI and 9/TSP, and the extensions titanic adds to them.

It owns every frame layout: `mdp` (7/MDP, 18/MDP and majortomo's dialect), `mmi` (8/MMI),
`tsp` (9/TSP's codes, texts and UUIDs), `identity` (who sent a request), `manage`
(titanic.manage's wire form), `failure` (a worker's failure report), `refusal` (a broker's
refusal of a request it cannot take) and `flp` (Freelance, 10/FLP: requests without a broker).
It imports only `titanic.errors`: no zmq, no socket, no clock, so every other package may use
it.
"""

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
