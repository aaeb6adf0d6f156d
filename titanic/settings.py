"""Named defaults, with their units, and the frozen settings objects built from them."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from titanic.errors import EndpointError

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
HEARTBEAT_INTERVAL_S = 2.5
HEARTBEAT_LIVENESS = 3
BUSY_WORKER_TIMEOUT_S = 300.0
QUEUED_REQUEST_TTL_S = 60.0
SERVICE_QUEUE_LIMIT = 100_000
#: Most requests a worker may hold at once (its credit never exceeds this).
WORKER_PREFETCH = 16
#: A worker gets more than one request at a time only while the requests queued at it would wait
#: less than this, judged by how long it has been taking per request, in seconds.
PREFETCH_WAIT_S = 0.002
TOTAL_QUEUE_LIMIT = 1_000_000
MAX_MESSAGE_SIZE_BYTES = 64 * 1024 * 1024
#: Largest request the broker answers with a refusal instead of serving; below the hard limit
#: above (beyond which libzmq cuts the sender's connection without a word).
BROKER_MAX_REQUEST_BYTES = 32 * 1024 * 1024
#: Longest service name the broker accepts, in bytes (the dispatcher stores at most 255 too).
MAX_SERVICE_NAME_BYTES = 255
#: Bytes of requests one client (a connection, or a CURVE key) may have waiting in the broker's
#: queues at once, each request counted as its service name and body plus QUEUED_REQUEST_COST.
MAX_QUEUED_BYTES_PER_CLIENT = 64 * 1024 * 1024
#: What a queued request costs the broker beyond its bytes (its place in the queue), in bytes.
QUEUED_REQUEST_COST = 256
#: Largest request body titanic stores; below the broker's limit so the refusal can be answered.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
CLIENT_TIMEOUT_S = 2.5
CLIENT_RETRIES = 2
RECONNECT_INITIAL_S = 0.25
RECONNECT_MAX_S = 8.0
SHUTDOWN_LINGER_MS = 200
#: Freelance (10/FLP) clients: a PING to every server this often, in seconds.
FREELANCE_PING_INTERVAL_S = 0.25
#: A freelance server is taken for dead after this many ping intervals without a word from it.
FREELANCE_LIVENESS = 4
#: A freelance request unanswered this long at one server is sent to another too, in seconds.
FREELANCE_ATTEMPT_TIMEOUT_S = 1.0
#: How often a client pings a server it is not connected to yet (such a PING costs no
#: traffic: the socket refuses it at once), in seconds.
FREELANCE_PROBE_INTERVAL_S = 0.005


#: The endpoint forms titanic takes, for error messages.
ENDPOINT_FORMS = ("tcp://HOST:PORT, HOST:PORT (taken as tcp://), PORT (tcp://127.0.0.1:PORT), "
                  "ipc://PATH or inproc://NAME")
_TCP = re.compile(r"\A(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>[0-9]+|\*)\Z")


def check_endpoint(text: str, *, bind: bool = False) -> str:
    """An endpoint in ZeroMQ's form: `HOST:PORT` is taken as tcp://HOST:PORT and a port alone
    as tcp://127.0.0.1:PORT; EndpointError (one line, naming the accepted forms) for anything
    else ZeroMQ could not use. Port `*` or 0 and host `*` are for binding only."""
    endpoint = text.strip()
    try:  # a command line's bytes that are not UTF-8: a socket given them could not be
        endpoint.encode("utf-8")  # closed (its context's term() would wait for ever)
    except UnicodeEncodeError:
        raise EndpointError(f"{quoted(text)} is not an endpoint to "
                            f"{'bind' if bind else 'connect to'}: it is not UTF-8 text") from None
    if endpoint.isdigit():
        endpoint = f"tcp://127.0.0.1:{endpoint}"
    elif "://" not in endpoint and _TCP.match(endpoint):
        endpoint = f"tcp://{endpoint}"
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc") and rest:
        return endpoint
    if scheme == "tcp" and (found := _TCP.match(rest)) is not None:
        host, port = found["host"], found["port"]
        wildcard = host == "*" or port in ("*", "0")
        if (port == "*" or 0 <= int(port) <= 65535) and (bind or not wildcard):
            return endpoint
    raise EndpointError(f"{quoted(text)} is not an endpoint to "
                        f"{'bind' if bind else 'connect to'}: use {ENDPOINT_FORMS}")


def quoted(text: str | bytes, limit: int = 80) -> str:
    """`text` in quotes for a one-line message, cut at `limit` characters: bytes that are not
    UTF-8 (a command line's are kept by Python as lone surrogates) as \\xNN escapes, and
    characters that are not printable (a newline, say) escaped, never a Python repr."""
    raw = text if isinstance(text, bytes) else _encoded(text)
    shown = "".join(char if char.isprintable() else char.encode("unicode_escape").decode()
                    for char in raw.decode("utf-8", "backslashreplace"))
    return "'" + (shown if len(shown) <= limit else shown[:limit - 3] + "...") + "'"


def _encoded(text: str) -> bytes:
    """A str as UTF-8, its lone surrogates (a command line's bytes that are not UTF-8) as the
    bytes they stand for, or escaped where they stand for none."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def broker_list(brokers: str | Sequence[str]) -> list[str]:
    """Broker endpoints from one endpoint, a comma-separated list, or a sequence of either,
    each checked and completed by check_endpoint; EndpointError if one is not an endpoint or
    none is given; TypeError if they are not text."""
    items: list[object] = (list(brokers) if isinstance(brokers, Iterable)
                           and not isinstance(brokers, str | bytes | bytearray) else [brokers])
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"the broker endpoint must be a str (or a sequence of str), not "
                            f"{type(item).__name__}")
    return _endpoints([item for item in items if isinstance(item, str)])


def _endpoints(items: list[str]) -> list[str]:
    endpoints = [check_endpoint(part) for item in items for part in item.split(",")
                 if part.strip()]
    if not endpoints:
        raise EndpointError("no broker endpoint given")
    return endpoints


def env_str(name: str, default: str) -> str:
    """A TITANIC_* environment variable, or the default when unset or empty."""
    value = os.environ.get(name, "")
    return value if value else default


def default_data_dir() -> Path:
    """The per-user folder for titanic's data: $XDG_DATA_HOME/titanic or ~/.local/share/titanic."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "titanic"


def default_database_url() -> str:
    """TITANIC_DATABASE_URL, else the path of a SQLite file in the per-user data folder (a
    plain path is a SQLite file wherever a database is given)."""
    url = os.environ.get("TITANIC_DATABASE_URL")
    if url:
        return url
    return str(default_data_dir() / "titanic.db")


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """How the broker behaves; every time is in seconds."""

    heartbeat_interval: float = HEARTBEAT_INTERVAL_S
    heartbeat_liveness: int = HEARTBEAT_LIVENESS
    busy_worker_timeout: float = BUSY_WORKER_TIMEOUT_S
    request_ttl: float = QUEUED_REQUEST_TTL_S
    queue_limit: int = SERVICE_QUEUE_LIMIT
    total_queue_limit: int = TOTAL_QUEUE_LIMIT
    max_message_size: int = MAX_MESSAGE_SIZE_BYTES
    worker_prefetch: int = WORKER_PREFETCH
    prefetch_wait: float = PREFETCH_WAIT_S
    #: Bytes of request body above which a client gets "413 ..." back (0: no soft limit).
    max_request_size: int = BROKER_MAX_REQUEST_BYTES
    #: Bytes of queued requests per client above which it gets "503 ..." back.
    max_queued_bytes_per_client: int = MAX_QUEUED_BYTES_PER_CLIENT

    @property
    def worker_expiry(self) -> float:
        """Seconds of silence after which an idle worker is taken for dead."""
        return self.heartbeat_interval * self.heartbeat_liveness
