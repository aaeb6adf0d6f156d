"""The broker's side of a host that runs inside it (titanic.dispatch.hosted): what passes
between them.

A broker may host services itself (`BrokerCore(local_services=...)`): the requests clients send
them are not routed but kept here for the host, which answers them through the core. The host
also sends requests of its own as a client without a socket, from addresses no peer can have;
their replies, and the refusals of the broker's limits, are kept here until the host takes them.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from titanic.protocol.mdp import Dialect, Frames
from titanic.protocol.refusal import Refusal


class LocalRequest(NamedTuple):
    """A client's request for a service the broker's host answers itself."""

    client: bytes
    dialect: Dialect
    service: bytes
    body: Frames
    #: The client's CURVE key (Z85), None without CURVE.
    user: bytes | None


#: A reply to one of the host's own requests: (its address, the reply body, or the broker's
#: Refusal when it refused the request: a full queue, a request over a limit).
LocalReply = tuple[bytes, "Frames | Refusal"]


class LocalDesk:
    """The host's services, and what waits for the host: requests for it, replies to it."""

    def __init__(self, services: frozenset[bytes]) -> None:
        self.services = services
        self.requests: list[LocalRequest] = []
        self.replies: list[LocalReply] = []
        #: PARTIALs of streamed replies to the host's requests: (address, frames).
        self.partials: list[tuple[bytes, Frames]] = []
        # libzmq's own peer addresses start with a zero byte and are five bytes long; the
        # host's are longer and start with a random prefix.
        self.prefix = b"\x00" + os.urandom(8)
        self._count = 0

    def new_address(self) -> bytes:
        """An address for the host's next request."""
        self._count += 1
        return self.prefix + self._count.to_bytes(8, "big")

    def take_partials(self) -> list[tuple[bytes, Frames]]:
        """The PARTIALs that came for the host's requests since the last call, oldest first."""
        partials, self.partials = self.partials, []
        return partials

    def take(self) -> tuple[list[LocalRequest], list[LocalReply]]:
        """Everything that came for the host since the last call, oldest first."""
        requests, replies = self.requests, self.replies
        if requests:
            self.requests = []
        if replies:
            self.replies = []
        return requests, replies
