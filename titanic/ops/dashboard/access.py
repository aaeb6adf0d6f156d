"""Who may use the dashboard, decided without a web framework: the Host names it answers to,
the token its actions need (and its reading too when it is bound beyond loopback), and the
Origin an action must come from.

A page anywhere on the web can make a visitor's browser send requests to the dashboard in two
ways. By a name of its own that it points at our address (DNS rebinding): the browser then
treats our answers as that page's own and lets it read them, but its requests carry its name in
`Host`, so answering only to our own names stops it. Across sites, a form or a fetch aimed at
http://127.0.0.1:PORT: the browser does not let that page read our answers, but it would let the
request act, so an action needs the token in a header (a form cannot set one, and a fetch from
another origin that sets one is stopped by the browser's preflight, which we never approve),
and the `Origin` a browser puts on every POST must be our own.

This module imports neither Flask nor anything that needs the `dashboard` extra.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: The header that carries the token; a cross-site form cannot set it.
TOKEN_HEADER = "X-Titanic-Token"
#: The query parameter that carries the token once, on the page's address (`/?token=...`).
TOKEN_PARAMETER = "token"
#: The names a loopback-bound dashboard also answers to, as a Host header writes them.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
#: Shortest token accepted from a file or a variable.
MIN_TOKEN_LENGTH = 16
#: Methods that only read; any other is an action.
READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ALL_INTERFACES = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_COOKIE_PURPOSE = b"titanic dashboard: reading"

HostPort = tuple[str, int]


class TokenError(ValueError):
    """A token, or a file meant to hold one, that cannot be used (the text says why)."""


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, with its HTTP status."""

    status: int
    reason: str


@dataclass(frozen=True)
class Asked:
    """What one HTTP request brings that the checks look at (None: absent)."""

    method: str
    path: str
    host: str | None
    origin: str | None = None
    fetch_site: str | None = None
    header_token: str | None = None
    query_token: str | None = None
    cookie: str | None = None


@dataclass(frozen=True)
class Access:
    """The rules one dashboard applies: the (host, port) pairs it answers to, its token, its
    port, and whether reading needs the token too."""

    hosts: frozenset[HostPort]
    token: str
    port: int
    reading_needs_token: bool

    @property
    def cookie_name(self) -> str:
        """The reading cookie's name: one per port, since a browser sends a host's cookies to
        every port of that host."""
        return f"titanic_dashboard_{self.port}"

    @property
    def cookie_value(self) -> str:
        """What the reading cookie holds: derived from the token, not the token itself, so a
        cookie seen by another server on the same host grants no action."""
        return hmac.new(self.token.encode(), _COOKIE_PURPOSE, hashlib.sha256).hexdigest()

    def is_token(self, given: str | None) -> bool:
        """Whether `given` is the token (compared in constant time)."""
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def check(self, asked: Asked) -> Refusal | None:
        """None if the request may go on, else why not: a foreign Host (421), an action
        without the token or from another origin (403), reading without the token where
        reading needs it (403)."""
        if asked.host is None or split_host(asked.host) not in self.hosts:
            shown = "none" if asked.host is None else repr(asked.host[:100])
            return Refusal(421, f"misdirected request: this dashboard does not answer to the "
                           f"Host {shown} (see titanic dashboard --allow-host)")
        if asked.method.upper() not in READING_METHODS:
            return self._check_action(asked)
        if self.reading_needs_token and not self.may_read(asked):
            return Refusal(403, f"forbidden: this dashboard needs its token: open the address "
                           f"it printed at start (/?{TOKEN_PARAMETER}=...), or send the "
                           f"{TOKEN_HEADER} header")
        return None

    def may_read(self, asked: Asked) -> bool:
        """Whether the request shows the token: in the header, in `/?token=` (the page's own
        address), or as the reading cookie."""
        return (self.is_token(asked.header_token)
                or (asked.path == "/" and self.is_token(asked.query_token))
                or (asked.cookie is not None
                    and hmac.compare_digest(asked.cookie.encode(), self.cookie_value.encode())))

    def gives_token(self, asked: Asked) -> bool:
        """Whether the page served for this request may hold the token for its buttons: when
        reading needs no token (the Host check keeps a rebinding page from reading it), or
        when the request showed the token itself, not only the reading cookie."""
        return (not self.reading_needs_token or self.is_token(asked.header_token)
                or self.is_token(asked.query_token))

    def _check_action(self, asked: Asked) -> Refusal | None:
        if asked.origin is not None and not same_origin(asked.origin, asked.host):
            return Refusal(403, f"forbidden: an action from another origin "
                           f"({asked.origin[:100]!r})")
        site = (asked.fetch_site or "same-origin").lower()
        if site not in ("same-origin", "none"):
            return Refusal(403, f"forbidden: an action from another site (Sec-Fetch-Site: "
                           f"{site[:40]})")
        if not self.is_token(asked.header_token):
            return Refusal(403, f"forbidden: an action needs the dashboard's token in the "
                           f"{TOKEN_HEADER} header")
        return None


def split_host(value: str, default_port: int = 80) -> HostPort | None:
    """A Host header (or an Origin's authority) as a lower-case name and a port, the port
    `default_port` when absent; IPv6 addresses in brackets, in their short form; a trailing
    dot dropped. None if it is not one."""
    text = value.strip().lower()
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket:
            return None
        try:
            name = f"[{ipaddress.IPv6Address(address).compressed}]"
        except ValueError:
            return None
    else:
        name, colon, port_text = text.partition(":")
        rest = colon + port_text
        name = name.removesuffix(".")
        if not _NAME.fullmatch(name):
            return None
    if not rest:
        return name, default_port
    port_text = rest.removeprefix(":")
    if (port_text == rest or not port_text.isascii() or not port_text.isdigit()
            or not 0 < int(port_text) < 65536):
        return None
    return name, int(port_text)


def same_origin(origin: str, host: str | None) -> bool:
    """Whether an Origin header (`scheme://host[:port]`) names the same host and port as the
    request's Host header, the port defaulting to the scheme's. `null` never does."""
    scheme, separator, authority = origin.strip().lower().partition("://")
    default = _DEFAULT_PORTS.get(scheme)
    if not separator or default is None or host is None or "/" in authority:
        return False
    ours = split_host(host, default)
    return ours is not None and ours == split_host(authority, default)


def is_loopback(bind_host: str) -> bool:
    """Whether a bind address is loopback only (`localhost`, 127.0.0.0/8, ::1)."""
    if bind_host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind_host).is_loopback
    except ValueError:
        return False


def binds_all(bind_host: str) -> bool:
    """Whether a bind address is every interface (0.0.0.0, ::)."""
    return bind_host in _ALL_INTERFACES


def host_name(bind_host: str) -> str:
    """A bind address as a Host header writes it (IPv6 in brackets)."""
    return f"[{bind_host}]" if ":" in bind_host else bind_host


def shown_host(bind_host: str, allow: Iterable[str] = ()) -> str:
    """The host to put in the address a dashboard prints: the bound one, or bound to every
    interface the first --allow-host name, else this machine's name."""
    if not binds_all(bind_host):
        return host_name(bind_host)
    for entry in allow:
        parsed = split_host(entry)
        if parsed is not None:
            return parsed[0]
    return socket.gethostname()


def machine_names() -> list[str]:
    """This machine's names and the addresses they resolve to, as Host headers write them:
    what a dashboard bound to every interface answers to besides loopback and --allow-host."""
    names = [socket.gethostname(), socket.getfqdn()]
    found: list[str] = []
    for name in names:
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
        except OSError:
            continue
        found += [host_name(str(info[4][0])) for info in infos]
    return list(dict.fromkeys(n for n in [*names, *found] if n))


def allowed_hosts(bind_host: str, port: int, allow: Iterable[str] = (),
                  machine: Iterable[str] | None = None) -> frozenset[HostPort]:
    """The (name, port) pairs a dashboard bound to `bind_host`:`port` answers to.

    Loopback: the bound name and the loopback names. A specific address: that address. Every
    interface: the loopback names and `machine` (machine_names() by default). Each of `allow`
    (NAME, or NAME:PORT for a name that a proxy forwards with another port) is added; a
    malformed one is a ValueError. Names without a port take `port`."""
    if is_loopback(bind_host):
        names = [host_name(bind_host), *LOOPBACK_NAMES]
    elif binds_all(bind_host):
        names = [*LOOPBACK_NAMES, *(machine_names() if machine is None else machine)]
    else:
        names = [host_name(bind_host)]
    hosts = {parsed for name in names if (parsed := split_host(name, port)) is not None}
    for entry in allow:
        parsed = split_host(entry, port)
        if parsed is None:
            raise ValueError(f"--allow-host: not a host name, or NAME:PORT: {entry!r}")
        hosts.add(parsed)
    return frozenset(hosts)


def make_token() -> str:
    """A new token: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def check_token(value: str, source: str) -> str:
    """The token in `value` (surrounding white space dropped); TokenError if it is too short
    or holds characters a header or an address cannot carry as they are."""
    token = value.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{source}: a token needs at least {MIN_TOKEN_LENGTH} characters")
    if not all(33 <= ord(char) < 127 for char in token):
        raise TokenError(f"{source}: a token is printable ASCII without spaces")
    return token


def read_token_file(path: Path) -> str:
    """The token in a file of the user's; TokenError if it cannot be read, holds no usable
    token, or may be read or written by others than its owner (as ssh refuses such keys)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TokenError(f"cannot read the token file {path}: {why}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"the token file {path} may be read or written by others (mode "
                         f"{stat.S_IMODE(mode):o}): chmod 600 it")
    return check_token(text, f"the token file {path}")
