"""MDP workers: `Worker` serves one service, one request at a time; `echo_handler` echoes.

It owns the worker's side of 7/MDP and 18/MDP: `connection` is one worker socket (READY,
heartbeats both ways, DISCONNECT, reconnection), `mdp` the blocking `Worker` over one,
`pool` many connections driven from one SocketSet (the dispatcher's TSP services), `group` N
workers on threads for `titanic worker run`, `tasks` a task (`@titanic.task`) as a worker's
handler, and `freelance` the same handlers served to Freelance (10/FLP) clients directly. It
may import `titanic.tasks` and what that reaches (`titanic.client`, `titanic.security`,
`titanic.protocol`, the foundation); never the broker, the dispatcher or the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from titanic._lazy import lazy_names

if TYPE_CHECKING:
    from titanic.worker.freelance import FreelanceServer
    from titanic.worker.mdp import Worker, echo_handler

__getattr__ = lazy_names(__name__, {"FreelanceServer": "titanic.worker.freelance",
                                    "Worker": "titanic.worker.mdp",
                                    "echo_handler": "titanic.worker.mdp"})

__all__ = ["FreelanceServer", "Worker", "echo_handler"]
