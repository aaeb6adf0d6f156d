"""What the dashboard shows, refreshed in a background thread, and the actions it takes.

One ManagementClient and one TitanicClient, used under one lock: zmq sockets are not
thread-safe, and the web server answers from several threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from titanic.client.manage import ManagementClient
from titanic.client.tsp import TitanicClient
from titanic.errors import TitanicError

log = logging.getLogger("titanic.dashboard")

#: Seconds between refreshes, and how much history the chart keeps.
REFRESH_S = 2.0
HISTORY_S = 15 * 60.0
FAILED_LISTED = 50


class DashboardState:
    """The latest view, its history and the failed requests, kept fresh by `run()`."""

    def __init__(self, make_clients: Callable[[], tuple[ManagementClient, TitanicClient]], *,
                 refresh: float = REFRESH_S, history: float = HISTORY_S) -> None:
        self._make_clients = make_clients
        self._clients: tuple[ManagementClient, TitanicClient] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.refresh = refresh
        self._history: deque[dict[str, Any]] = deque(maxlen=max(1, int(history / refresh)))
        self._view: dict[str, Any] | None = None
        self._failed: list[dict[str, Any]] = []
        self._error: str | None = None
        self._updated: float | None = None

    def _call(self, action: Callable[[ManagementClient, TitanicClient], Any]) -> Any:
        """Run `action` with the clients, under the lock; a client that failed is replaced."""
        with self._lock:
            if self._clients is None:
                self._clients = self._make_clients()
            try:
                return action(*self._clients)
            except TitanicError:
                manage, titanic = self._clients
                self._clients = None
                manage.close()
                titanic.close()
                raise

    def update(self) -> None:
        """Ask the broker and a dispatcher again; a failure is kept to show, not raised."""
        try:
            view = self._call(lambda manage, _: manage.info())
            failed = self._call(lambda manage, _: manage.failed(limit=FAILED_LISTED))
        except TitanicError as exc:
            self._error = str(exc)
            log.warning("dashboard: cannot refresh: %s", exc)
            return
        now = time.time()
        self._view, self._failed, self._error, self._updated = view, failed, None, now
        self._history.append({"time": now, "services": {
            row["service"]: {"pending": row["pending"], "dispatched": row["dispatched"],
                             "completed_per_s": row["completed_per_s"]}
            for row in view["services"]}})

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        return {"view": self._view, "failed": self._failed, "error": self._error,
                "updated": self._updated, "refresh_s": self.refresh,
                "history": list(self._history)}

    def retry(self, request_id: str) -> bool:
        """Make one failed or expired request pending again; False if it was neither."""
        done = bool(self._call(lambda manage, _: manage.retry_one(request_id)))
        self.update()
        return done

    def close_request(self, request_id: str) -> None:
        """Delete one request and its reply (titanic.close)."""
        self._call(lambda _, titanic: titanic.close_request(request_id))
        self.update()

    def run(self) -> None:
        """Refresh every `refresh` seconds until stop(); then close the clients."""
        try:
            while not self._stop.is_set():
                self.update()
                self._stop.wait(self.refresh)
        finally:
            self.close()

    def stop(self) -> None:
        """Make run() return; safe from other threads."""
        self._stop.set()

    def close(self) -> None:
        """Close the clients (a later call makes new ones)."""
        with self._lock:
            if self._clients is not None:
                for client in self._clients:
                    client.close()
                self._clients = None
