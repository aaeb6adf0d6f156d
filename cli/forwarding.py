"""The options of every dispatcher, its own (`titanic-dispatcher`) or the broker's (`titanic
broker --titanic`): forwarding, retries, lifetimes, the store."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from titanic.dispatch.settings import DispatcherSettings
from titanic.settings import MAX_REQUEST_BYTES
from titanic_cli.options import store_key_option

if TYPE_CHECKING:
    from titanic.store import Store

R = TypeVar("R")
_DEFAULTS = DispatcherSettings()

_FORWARDING_OPTIONS = [
    click.option("--request-timeout", type=click.FloatRange(min=0.01),
                 default=_DEFAULTS.request_timeout, show_default=True,
                 envvar="TITANIC_REQUEST_TIMEOUT",
                 help="Seconds a worker may take on a request before it is retried."),
    click.option("--max-attempts", type=click.IntRange(min=1), default=_DEFAULTS.max_attempts,
                 show_default=True, envvar="TITANIC_MAX_ATTEMPTS",
                 help="Deliveries tried before a request fails for good."),
    click.option("--backoff", type=click.FloatRange(min=0), default=_DEFAULTS.backoff,
                 show_default=True, envvar="TITANIC_BACKOFF",
                 help="Seconds before the first retry; doubles on each attempt."),
    click.option("--backoff-max", type=click.FloatRange(min=0), default=_DEFAULTS.backoff_max,
                 show_default=True, envvar="TITANIC_BACKOFF_MAX",
                 help="Longest wait between tries."),
    click.option("--max-in-flight", type=click.IntRange(min=1), default=_DEFAULTS.max_in_flight,
                 show_default=True, envvar="TITANIC_MAX_IN_FLIGHT",
                 help="Requests forwarded at once, all services together (one socket to the "
                      "broker each, opened when first needed)."),
    click.option("--max-in-flight-per-service", type=click.IntRange(min=1),
                 default=_DEFAULTS.max_in_flight_per_service, show_default=True,
                 envvar="TITANIC_MAX_IN_FLIGHT_PER_SERVICE",
                 help="Most requests forwarded at once to one service: its window starts at 8 "
                      "and widens while replies come back within a quarter of --request-timeout, "
                      "halving when one does not, back to 1 after a broker restart."),
    click.option("--pending-ttl", type=click.FloatRange(min=1), default=_DEFAULTS.pending_ttl,
                 show_default=True, envvar="TITANIC_PENDING_TTL",
                 help="Seconds after submission when an undelivered request expires."),
    click.option("--reply-ttl", type=click.FloatRange(min=1), default=_DEFAULTS.reply_ttl,
                 show_default=True, envvar="TITANIC_REPLY_TTL",
                 help="Seconds a finished request and its reply are kept, fetched or not."),
    click.option("--reply-linger", type=click.FloatRange(min=0, max=1),
                 default=_DEFAULTS.reply_linger, show_default=True, envvar="TITANIC_REPLY_LINGER",
                 help="Seconds a reply may wait to be stored in the next commit of new requests "
                 "or claims instead of a commit of its own; a titanic.reply stores what waits "
                 "first (0: at once)."),
    click.option("--forward-linger", type=click.FloatRange(min=0, max=1),
                 default=_DEFAULTS.forward_linger, show_default=True,
                 envvar="TITANIC_FORWARD_LINGER",
                 help="Requests arriving one at a time, each within this many seconds of the one "
                 "before: each is forwarded when the next one comes (it crosses the broker "
                 "during that one's commit), at a titanic.reply or titanic.close, or after "
                 "twice the time between the two (0: at once)."),
    click.option("--store-wait", type=click.FloatRange(min=0), default=60.0, show_default=True,
                 envvar="TITANIC_STORE_WAIT",
                 help="Seconds to keep trying a database server that cannot be reached at "
                 "start-up (restarting, failing over) before giving up with exit 7."),
    click.option("--sqlite-synchronous", type=click.Choice(["FULL", "NORMAL"]), default="FULL",
                 show_default=True, envvar="TITANIC_SQLITE_SYNCHRONOUS",
                 help="SQLite durability: FULL survives power loss; NORMAL may lose the last "
                 "transactions on power loss (not on a crash) and is faster."),
    store_key_option,
    click.option("--max-stored-per-key", type=click.IntRange(min=0), default=0, show_default=True,
                 envvar="TITANIC_MAX_STORED_PER_KEY",
                 help="With CURVE: unfinished requests one client key may have stored; beyond, "
                 "titanic.request is answered '503 ...' (0: no limit) "
                 "[env TITANIC_MAX_STORED_PER_KEY]."),
]


def _split_peers(ctx: click.Context, param: click.Parameter,
                 value: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Every --peer (or TITANIC_PEERS, comma-separated) as (name, endpoint) pairs."""
    from titanic.protocol.peer import parse_peers

    try:
        return tuple(parse_peers(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def _check_site(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from titanic.protocol.peer import check_site_name

    try:
        return None if value is None else check_site_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


_PEER_OPTIONS = [
    click.option("--site", default=None, envvar="TITANIC_SITE", callback=_check_site,
                 help="This site's name, as its peers know it [env TITANIC_SITE; default: the "
                 "host name]."),
    click.option("--peer", "peers", multiple=True, metavar="NAME=ENDPOINT",
                 envvar="TITANIC_PEERS", callback=_split_peers,
                 help="Another site's broker, repeatable or comma-separated: requests for "
                 "services without a live worker here go to a peer that serves them "
                 "[env TITANIC_PEERS]."),
    click.option("--peer-lease", type=click.FloatRange(min=1), default=_DEFAULTS.peer_lease,
                 show_default=True, envvar="TITANIC_PEER_LEASE",
                 help="Seconds a request sent to a peer stays there while the link is down "
                 "before it may go elsewhere."),
    click.option("--peer-overflow-after", type=click.FloatRange(min=0),
                 default=_DEFAULTS.peer_overflow_after, show_default=True,
                 envvar="TITANIC_PEER_OVERFLOW_AFTER",
                 help="Seconds requests may wait for busy workers here before some go to a "
                 "peer with free workers for their service."),
]
_FORWARDING_OPTIONS += _PEER_OPTIONS

_FORWARDING_NAMES = ("request_timeout", "max_attempts", "backoff", "backoff_max", "max_in_flight",
                     "max_in_flight_per_service", "pending_ttl", "reply_ttl", "reply_linger",
                     "forward_linger", "store_wait", "sqlite_synchronous", "store_key",
                     "max_stored_per_key", "site", "peers", "peer_lease", "peer_overflow_after")


@dataclass(frozen=True)
class ForwardingOptions:
    """The dispatcher's options as given on the command line (see forwarding_options)."""

    request_timeout: float
    max_attempts: int
    backoff: float
    backoff_max: float
    max_in_flight: int
    max_in_flight_per_service: int
    pending_ttl: float
    reply_ttl: float
    reply_linger: float
    forward_linger: float
    store_wait: float
    sqlite_synchronous: str
    store_key: Path | None
    max_stored_per_key: int
    site: str | None = None
    peers: tuple[tuple[str, str], ...] = ()
    peer_lease: float = _DEFAULTS.peer_lease
    peer_overflow_after: float = _DEFAULTS.peer_overflow_after

    def settings(self, **more: Any) -> DispatcherSettings:
        """DispatcherSettings from these options and `more`."""
        return DispatcherSettings(
            request_timeout=self.request_timeout, max_attempts=self.max_attempts,
            backoff=self.backoff, backoff_max=self.backoff_max,
            max_in_flight=self.max_in_flight,
            max_in_flight_per_service=self.max_in_flight_per_service,
            pending_ttl=self.pending_ttl, reply_ttl=self.reply_ttl,
            reply_linger=self.reply_linger, forward_linger=self.forward_linger,
            max_stored_per_key=self.max_stored_per_key, peers=self.peers,
            peer_lease=self.peer_lease, peer_overflow_after=self.peer_overflow_after,
            site=self.site or _DEFAULTS.site, **more)

    def open_store(self, db_url: str | None, max_request_size: int = MAX_REQUEST_BYTES) -> Store:
        """The store, brought to the current schema (StoreError, exit 7, if it cannot be)."""
        from titanic.store import open_store  # SQLAlchemy: only for the commands that store

        return open_store(db_url, sqlite_synchronous=self.sqlite_synchronous,
                          max_request_bytes=max_request_size, store_key=self.store_key,
                          wait=self.store_wait)


def forwarding_options(func: Callable[..., R]) -> Callable[..., R]:
    """The dispatcher's options, given to the command as `forwarding`, a ForwardingOptions."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        given = ForwardingOptions(**{name: kwargs.pop(name) for name in _FORWARDING_NAMES})
        return func(*args, forwarding=given, **kwargs)

    decorated: Callable[..., R] = wrapper
    for option in reversed(_FORWARDING_OPTIONS):
        decorated = option(decorated)
    return decorated
