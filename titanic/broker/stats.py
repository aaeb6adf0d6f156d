"""What the broker counts, and the one warning per interval that reports what it dropped."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from titanic.logs import counters_text

log = logging.getLogger("titanic.broker")

#: Counters whose growth is logged once per heartbeat interval.
REPORTED = ("malformed", "expired_requests", "rejected_requests", "abandoned_requests",
            "workers_disconnected", "workers_expired", "unroutable", "dropped_at_hwm",
            "handshakes_failed", "keys_refused", "plaintext_refused", "oversized_requests",
            "over_client_limit", "workers_on_client_endpoint", "clients_on_worker_endpoint",
            "identities_refused")


@dataclass
class BrokerStats:
    """Counters of what the broker did and dropped; nothing is dropped without a count."""

    messages: int = 0
    malformed: int = 0
    requests: int = 0
    replies: int = 0
    mmi_requests: int = 0
    queued: int = 0
    expired_requests: int = 0
    rejected_requests: int = 0
    abandoned_requests: int = 0
    unroutable: int = 0
    dropped_at_hwm: int = 0
    workers_registered: int = 0
    workers_expired: int = 0
    workers_disconnected: int = 0
    #: Failed security handshakes of every kind (the next two included).
    handshakes_failed: int = 0
    #: CURVE keys not in the allowed folder (ZAP refusals).
    keys_refused: int = 0
    #: Plaintext peers on a CURVE endpoint, when libzmq saw the mismatch before the peer hung up.
    plaintext_refused: int = 0
    #: Requests over max_request_size, answered "413".
    oversized_requests: int = 0
    #: Requests over max_queued_per_client, answered "503".
    over_client_limit: int = 0
    #: Worker commands on the client endpoint, answered DISCONNECT (separate endpoints only).
    workers_on_client_endpoint: int = 0
    #: Client requests on the worker endpoint, dropped (separate endpoints only).
    clients_on_worker_endpoint: int = 0
    #: Workers that asked for their callers' identities without an admin key: DISCONNECT.
    identities_refused: int = 0
    #: Workers removed at once because their connection closed (a message to them could not
    #: be routed): a worker process that died or was killed. Each is told in a log line.
    workers_gone: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return asdict(self)

    def __str__(self) -> str:
        """The counters in words, for a log line: `messages 1200, requests 600, ...`."""
        return counters_text(self)


class DropReport:
    """Once per interval, one warning line for whatever was dropped or refused, however much:
    a flood of bad input must not become a flood of log lines."""

    def __init__(self, stats: BrokerStats) -> None:
        self._stats = stats
        self._reported: dict[str, int] = {}
        self._last_peer: dict[str, bytes] = {}

    def told(self, counter: str, count: int) -> None:
        """`count` more of `counter` were told in log lines of their own: the next report
        leaves them out (they stay counted)."""
        if count:
            self._reported[counter] = self._reported.get(counter, 0) + count

    def refused(self, counter: str, peer: bytes) -> None:
        """Count a refusal under `counter`, remembering the peer for the next report."""
        setattr(self._stats, counter, getattr(self._stats, counter) + 1)
        self._last_peer[counter] = peer

    def report(self, interval: float) -> None:
        """Log what grew since the last report (naming the last peer refused), if anything."""
        now = self._stats.as_dict()
        grown = {name: now[name] - self._reported.get(name, 0) for name in REPORTED
                 if now[name] != self._reported.get(name, 0)}
        if grown:
            log.warning("in the last %.1f s: %s", interval,
                        ", ".join(self._describe(name, count) for name, count in grown.items()))
            self._reported = {name: now[name] for name in REPORTED}
        self._last_peer.clear()

    def _describe(self, name: str, count: int) -> str:
        peer = self._last_peer.get(name)
        last = f" (last from peer {peer.hex()})" if peer is not None else ""
        return f"{count} {name.replace('_', ' ')}{last}"
