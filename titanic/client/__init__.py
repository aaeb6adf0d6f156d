"""Clients: MDP requests (`Client`, `PipelinedClient`) and the Titanic service's conversations.

It owns the client's side of every protocol: `mdp` (Client with Lazy Pirate retries,
PipelinedClient with many in flight, their `Completion`s), `session` (the 9/TSP conversations
without I/O: what to ask which broker, and what its answers mean), `answers` (those answers
as values and errors), `tsp` (TitanicClient, the blocking adapter over a session), `aio`
(AsyncTitanicClient, the asyncio adapter over the same session), `connect_watch` (a refused
connection or handshake seen at once), `manage` (titanic.manage's client), `flp_session` (the
Freelance, 10/FLP, conversation without I/O) and `freelance` (FreelanceClient and
AsyncFreelanceClient, brokerless, over it). It may import the
foundation (`titanic.errors`, `settings`, `_zmq`), `titanic.protocol` and `titanic.security`;
never the broker, a worker, the dispatcher or the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from titanic._lazy import lazy_names

if TYPE_CHECKING:
    from titanic.client.freelance import AsyncFreelanceClient, FreelanceClient
    from titanic.client.mdp import Client, Completion, PipelinedClient

__getattr__ = lazy_names(__name__, {"AsyncFreelanceClient": "titanic.client.freelance",
                                    "Client": "titanic.client.mdp",
                                    "Completion": "titanic.client.mdp",
                                    "FreelanceClient": "titanic.client.freelance",
                                    "PipelinedClient": "titanic.client.mdp"})

__all__ = ["AsyncFreelanceClient", "Client", "Completion", "FreelanceClient", "PipelinedClient"]
