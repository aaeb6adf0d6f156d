"""The Majordomo broker (7/MDP, 18/MDP, 8/MMI): `Broker`, one ROUTER endpoint and its loop.

It owns the routing and its driver: `core` makes every routing decision without a socket or a
clock (services, worker queues and credit, heartbeats, expiry, 8/MMI), helped by `queues`
(the queues, workers and credit), `refusals` (the answers to a limit), `local` (what passes to
a host running in the broker) and `stats` (its counters); `server` owns the sockets, the poll
loop, the clock and CURVE. It may import the foundation (`titanic.errors`, `settings`, `logs`,
`_zmq`), `titanic.protocol` and `titanic.security`, never a client, a worker, the dispatcher or
the store: a host (`titanic.dispatch.hosted`) plugs into it through `server.BrokerHost`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from titanic._lazy import lazy_names

if TYPE_CHECKING:
    from titanic.broker.server import Broker

__getattr__ = lazy_names(__name__, {"Broker": "titanic.broker.server"})

__all__ = ["Broker"]
