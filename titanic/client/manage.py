"""The client side of management: the brokers' facts (mmi.broker) and titanic.manage.

What `titanic info`, `titanic retry --state`, `titanic purge` and the dashboard read and do,
through the brokers only: a client needs no database credentials. Each broker is asked for its
own facts; titanic.manage goes to whichever broker answers (the client fails over), since every
dispatcher behind them shares one store.
"""

from __future__ import annotations

from typing import Any

import zmq

from titanic._zmq import SocketHook
from titanic.client.mdp import Brokers, Client
from titanic.errors import TitanicError, TitanicTimeoutError
from titanic.protocol import manage, mmi, tsp
from titanic.protocol.mdp import Dialect
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, DEFAULT_BROKER, broker_list

#: Most dispatchers `info` lists (each is asked once for who it is).
MAX_DISPATCHERS_LISTED = 32
#: Services of titanic itself, left out of the per-service table (the dispatchers serve them).
INTERNAL_PREFIX = "titanic."
STATES = ("pending", "dispatched", "done", "failed", "expired")


class ManagementError(TitanicError):
    """titanic.manage refused a command or failed (the text says why)."""


class ManagementClient:
    """Asks each broker for its facts and a dispatcher behind them for the store's view."""

    def __init__(self, broker: Brokers = DEFAULT_BROKER, *, dialect: Dialect = Dialect.MDP01,
                 timeout: float = CLIENT_TIMEOUT_S, retries: int = CLIENT_RETRIES,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 configure_socket: SocketHook | None = None) -> None:
        self.brokers = broker_list(broker)
        options: dict[str, Any] = {"dialect": dialect, "timeout": timeout, "retries": retries,
                                   "context": context, "configure_socket": configure_socket}
        self._client = Client(self.brokers, **options)
        # One client per broker for its own facts; with one broker, the same client.
        self._each = ([self._client] if len(self.brokers) == 1
                      else [Client(endpoint, **options) for endpoint in self.brokers])

    def broker_facts(self) -> list[dict[str, Any]]:
        """Each broker's facts (version, uptime, workers per service), with its `endpoint`;
        `version` None for a broker that is not titanic's, `error` for one that did not
        answer. TitanicTimeoutError if none answered."""
        found: list[dict[str, Any]] = []
        for endpoint, client in zip(self.brokers, self._each, strict=True):
            try:
                facts = mmi.parse_facts(client.request(mmi.BROKER, b""))
            except TitanicTimeoutError as exc:
                found.append({"endpoint": endpoint, "version": None, "error": str(exc)})
                continue
            found.append({"endpoint": endpoint, "version": None} if facts is None
                         else {"endpoint": endpoint, **facts})
        if all("error" in facts for facts in found):
            raise TitanicTimeoutError(found[0]["error"] if len(found) == 1 else
                                      f"no broker answers: {', '.join(self.brokers)}")
        return found

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
        known = [f for f in facts if f["version"] is not None]
        if known and not any(_serves(f, manage.SERVICE.decode()) for f in known):
            raise TitanicTimeoutError(f"the broker at {', '.join(f['endpoint'] for f in known)} "
                                      f"answers, but no dispatcher serves "
                                      f"{manage.SERVICE.decode()}")
        view = self.call(manage.Command.INFO, {"window_s": window})
        merged = merge_view(facts, view)
        merged["dispatchers"] = self.dispatchers(merged["dispatchers_serving"],
                                                 view.get("dispatcher"))
        # This site and its peers, as the dispatcher that answered sees them.
        merged["sites"] = (view.get("dispatcher") or {}).get("sites")
        return merged

    def dispatchers(self, serving: int | None,
                    known: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The dispatchers serving titanic.manage, each asked who it is: the broker hands
        requests to its least recently used idle worker, so `serving` questions in a row reach
        each dispatcher once (one that is busy meanwhile may be missed, another counted twice)."""
        found = {known["instance"]: known} if known else {}
        for _ in range(min(serving or 0, MAX_DISPATCHERS_LISTED)):
            described = self.call(manage.Command.DESCRIBE)["dispatcher"]
            found.setdefault(described["instance"], described)
        return sorted(found.values(), key=lambda d: (d["host"], d["pid"], d["instance"]))

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
        """Close the connections to the brokers."""
        for client in {id(c): c for c in [self._client, *self._each]}.values():
            client.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serves(facts: dict[str, Any], service: str) -> bool:
    return int(facts.get("services", {}).get(service, {}).get("workers", 0)) > 0


def merge_view(facts: list[dict[str, Any]], view: dict[str, Any]) -> dict[str, Any]:
    """One table: the store's rows per service with the brokers' workers and queues added, and
    services a broker knows with nothing stored; titanic's own services left out.

    A worker registers with every broker of its list, so live workers are the most any one
    broker counts; requests waiting in brokers' queues add up.
    """
    titanic_brokers = [f for f in facts if f.get("version") is not None]
    brokered: dict[str, dict[str, int]] = {}
    for broker in titanic_brokers:
        for name, counts in broker.get("services", {}).items():
            seen = brokered.setdefault(name, {"workers": 0, "queued": 0})
            seen["workers"] = max(seen["workers"], int(counts.get("workers", 0)))
            seen["queued"] += int(counts.get("queued", 0))
    rows = {row["service"]: row for row in view.get("services", [])}
    for name in brokered:
        if name not in rows and not name.startswith(INTERNAL_PREFIX):
            rows[name] = {"service": name, **dict.fromkeys(STATES, 0),
                          "oldest_pending_age_s": None, "completed_per_s": 0.0}
    for name, row in rows.items():
        known = brokered.get(name, {})
        row["workers"] = known.get("workers", 0) if titanic_brokers else None
        row["queued"] = known.get("queued", 0) if titanic_brokers else None
    dispatchers = (brokered.get(manage.SERVICE.decode(), {}).get("workers", 0)
                   if titanic_brokers else None)
    return {
        "time": view.get("time"),
        "window_s": view.get("window_s"),
        "brokers": [{key: value for key, value in broker.items() if key != "services"}
                    for broker in facts],
        "dispatcher": view.get("dispatcher"),
        "dispatchers_serving": dispatchers,
        "services": [rows[name] for name in sorted(rows)],
    }
