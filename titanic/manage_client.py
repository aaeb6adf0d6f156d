"""The client side of management: the broker's facts (mmi.broker) and titanic.manage.

What `titanic info`, `titanic retry --state`, `titanic purge` and the dashboard read and do,
through the broker only: a client needs no database credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from titanic.client import Client
from titanic.errors import TitanicError, TitanicTimeoutError
from titanic.protocol import manage, mmi, tsp
from titanic.protocol.mdp import Dialect
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, DEFAULT_BROKER

SocketHook = Callable[[zmq.Socket[bytes]], None]

#: Services of titanic itself, left out of the per-service table (the dispatchers serve them).
INTERNAL_PREFIX = "titanic."
STATES = ("pending", "dispatched", "done", "failed", "expired")


class ManagementError(TitanicError):
    """titanic.manage refused a command or failed (the text says why)."""


class ManagementClient:
    """Asks one broker for its facts and a dispatcher behind it for the store's view."""

    def __init__(self, broker: str = DEFAULT_BROKER, *, dialect: Dialect = Dialect.MDP01,
                 timeout: float = CLIENT_TIMEOUT_S, retries: int = CLIENT_RETRIES,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None) -> None:
        self.broker = broker
        self._client = Client(broker, dialect=dialect, timeout=timeout, retries=retries,
                              context=context, configure_socket=configure_socket)

    def broker_facts(self) -> dict[str, Any] | None:
        """The broker's version, uptime and workers per service (None: not titanic's broker)."""
        return mmi.parse_facts(self._client.request(mmi.BROKER))

    def call(self, command: manage.Command,
             arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """One titanic.manage command's answer; ManagementError if it was refused."""
        code, text, payload = manage.parse_reply(
            self._client.request(manage.SERVICE, *manage.build_request(command, arguments)))
        if code != tsp.Status.OK:
            raise ManagementError(f"titanic.manage {command.value}: {code} {text}".strip())
        return payload

    def info(self, window: float = 60.0) -> dict[str, Any]:
        """The whole view: the broker's facts, the dispatcher that answered, and per service
        the stored requests by state with the broker's live workers and queue beside them."""
        facts = self.broker_facts()
        if facts is not None and not _serves(facts, manage.SERVICE.decode()):
            raise TitanicTimeoutError(f"the broker at {self.broker} answers, but no dispatcher "
                                      f"serves {manage.SERVICE.decode()}")
        view = self.call(manage.Command.INFO, {"window_s": window})
        return merge_view(self.broker, facts, view)

    def failed(self, *, state: str = "failed", service: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
        """Failed (or expired) requests, oldest first, with their last error."""
        payload = self.call(manage.Command.FAILED,
                            {"state": state, "service": service, "limit": limit})
        requests: list[dict[str, Any]] = payload.get("requests", [])
        return requests

    def retry(self, *, state: str = "failed", service: str | None = None,
              dry_run: bool = False) -> int:
        """Every request in `state` (of one service or all) pending again; how many."""
        return int(self.call(manage.Command.RETRY, {"state": state, "service": service,
                                                    "dry_run": dry_run})["count"])

    def retry_one(self, request_id: str) -> bool:
        """One failed or expired request pending again; False if it was not failed or expired."""
        return bool(self.call(manage.Command.RETRY, {"uuid": request_id})["count"])

    def purge(self, *, state: str = "done", older_than: float, service: str | None = None,
              dry_run: bool = False) -> int:
        """Delete requests in a finished state, finished over `older_than` s ago; how many."""
        return int(self.call(manage.Command.PURGE, {
            "state": state, "older_than_s": older_than, "service": service,
            "dry_run": dry_run})["count"])

    def close(self) -> None:
        """Close the connection to the broker."""
        self._client.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serves(facts: dict[str, Any], service: str) -> bool:
    return int(facts.get("services", {}).get(service, {}).get("workers", 0)) > 0


def merge_view(broker: str, facts: dict[str, Any] | None,
               view: dict[str, Any]) -> dict[str, Any]:
    """One table: the store's rows per service with the broker's workers and queue added,
    and services the broker knows with nothing stored; titanic's own services left out."""
    brokered: dict[str, dict[str, int]] = (facts or {}).get("services", {})
    rows = {row["service"]: row for row in view.get("services", [])}
    for name in brokered:
        if name not in rows and not name.startswith(INTERNAL_PREFIX):
            rows[name] = {"service": name, **dict.fromkeys(STATES, 0),
                          "oldest_pending_age_s": None, "completed_per_s": 0.0}
    for name, row in rows.items():
        known = brokered.get(name)
        row["workers"] = None if facts is None else (known or {}).get("workers", 0)
        row["queued"] = None if facts is None else (known or {}).get("queued", 0)
    dispatchers = (brokered.get(manage.SERVICE.decode(), {}).get("workers")
                   if facts is not None else None)
    return {
        "time": view.get("time"),
        "window_s": view.get("window_s"),
        "brokers": [{"endpoint": broker, **{key: value for key, value in (facts or {}).items()
                                             if key != "services"}}],
        "dispatcher": view.get("dispatcher"),
        "dispatchers_serving": dispatchers,
        "services": [rows[name] for name in sorted(rows)],
    }
