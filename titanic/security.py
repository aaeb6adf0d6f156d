"""CurveZMQ for titanic: key files, the client side of a socket, and the broker's ZAP gatekeeper.

Key files use the ZeroMQ certificate format that `zmq.auth.load_certificate` reads: `NAME.key`
holds the public key, `NAME.key_secret` both keys and is created readable by its owner only.
The broker admits a peer whose public key is in any `*.key` file of its allowed folder; the folder
is read again whenever it changes, so keys are added and removed without a restart (a removed key
stops new connections; an open one stays until it closes).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from titanic._zmq import SocketHook
from titanic.errors import CurveKeyError

log = logging.getLogger(__name__)

#: ZAP domain of the broker's client endpoint (and of its only endpoint when there is one).
ZAP_DOMAIN = "titanic"
#: ZAP domain of the broker's separate worker endpoint.
WORKER_ZAP_DOMAIN = "titanic.workers"

#: What a key name may be: it becomes a file name.
KEY_NAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
#: A key file changed less than this long before the folder was read may change again without
#: its size or time stamp moving (coarse file-system clocks): such a folder is read again next time.
_RACY_NS = 2_000_000_000
#: ...but no more often than this, so a burst of handshakes does not read a big folder each time.
_RACY_REREAD_NS = 100_000_000
#: Handshake events a client-side watch listens for.
_CLIENT_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                  | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves Z85-encoded."""

    public: bytes
    secret: bytes


# -- key files ----------------------------------------------------------------------------------

def write_keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """Make a key pair: `NAME.key` (public, 0644) and `NAME.key_secret` (0600); never overwrites."""
    if not KEY_NAME.match(name):
        raise CurveKeyError(f"bad key name {name!r}: use letters, digits, '_', '-' and '.', "
                            "not starting with '.' or '-'")
    public, secret = zmq.curve_keypair()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_file, secret_file):
        if path.exists():
            raise CurveKeyError(f"{path} exists: not overwriting a key")
    banner = f"#   titanic CURVE key {name}, made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
    _write(secret_file, banner + "#   SECRET: keep this file private\n" + _body(public, secret),
           0o600)
    try:
        _write(public_file, banner + _body(public, None), 0o644)
    except OSError:
        secret_file.unlink(missing_ok=True)  # half a pair is worse than none
        raise
    return public_file, secret_file


def _body(public: bytes, secret: bytes | None) -> str:
    lines = ["metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    # O_EXCL: never follow or replace an existing file; the mode is final before any byte lands.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as out:
        os.fchmod(out.fileno(), mode)  # whatever the umask said
        out.write(text)


def load_keypair(secret_file: str | Path) -> KeyPair:
    """A key pair from a `.key_secret` file; both halves checked to belong together."""
    public, secret = _load(secret_file)
    if secret is None:
        raise CurveKeyError(f"{secret_file} holds no secret key (give the .key_secret file)")
    _check_z85(secret_file, "secret", secret)
    if zmq.curve_public(secret) != public:
        raise CurveKeyError(f"{secret_file}: the public key does not match the secret key")
    warn_if_readable_by_others(Path(secret_file), "secret key file")
    return KeyPair(public, secret)


def load_public_key(key_file: str | Path) -> bytes:
    """The public key from a `.key` or `.key_secret` file."""
    return _load(key_file)[0]


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    if os.path.isdir(path):
        raise CurveKeyError(f"{path} is a folder, not a CURVE key file")
    if not os.path.exists(path):
        raise CurveKeyError(f"CURVE key file {path} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except OSError as exc:
        raise CurveKeyError(f"cannot read CURVE key file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CurveKeyError(f"{path} holds no CURVE public key") from exc
    _check_z85(path, "public", public)
    return public, secret


def _check_z85(path: str | Path, which: str, key: bytes) -> None:
    try:
        valid = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError, TypeError):
        valid = False
    if not valid:
        raise CurveKeyError(f"{path}: the {which} key is not a 40-character Z85 CURVE key")


def warn_if_readable_by_others(path: Path, what: str) -> None:
    """Log a warning if a file holding secrets may be read by others than its owner."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s is readable by others (mode %o): chmod 600 it",
                    what, path, stat.S_IMODE(mode))


# -- the client side ----------------------------------------------------------------------------

def client_hook(server_public: bytes, keys: KeyPair) -> SocketHook:
    """Set a client or worker socket to speak CURVE to a server with this public key."""
    def configure(sock: zmq.Socket[bytes]) -> None:
        sock.curve_serverkey = server_public
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret

    return configure


def load_client_hook(server_key_file: str | Path, key_file: str | Path) -> SocketHook:
    """client_hook from the broker's public key file and our own `.key_secret` file."""
    return client_hook(load_public_key(server_key_file), load_keypair(key_file))


def describe_handshake_failure(event: int, value: int, *, server: bool = False,
                               curve: bool = True) -> str:
    """What a failed-handshake monitor event means, in words a user can act on.

    `server`: seen by the broker (about a peer) rather than by a client (about the broker);
    `curve`: whether the client itself speaks CURVE.
    """
    if server:
        return _describe_for_broker(event, value)
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"the broker refused this CURVE key (ZAP status {value}): its public key is not "
                "in the broker's allowed folder for this endpoint")
    if not curve:
        return ("the broker broke off the handshake: it requires CURVE "
                "(give --curve-server-key and --curve-key)")
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "security mismatch: this client speaks CURVE and the broker does not"
    return ("the broker broke off the CURVE handshake: is --curve-server-key the broker's "
            "public key?")


def _describe_for_broker(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"CURVE key refused (ZAP status {value})"
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "a plaintext peer (no CURVE): security mechanism mismatch"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return f"the connection was lost during the security handshake ({_errno(value)})"
    if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "the CURVE handshake failed: the peer has the wrong server public key"
    return f"the security handshake failed (protocol error 0x{value:x})"


def _errno(value: int) -> str:
    try:
        return os.strerror(value)
    except ValueError:
        return f"error {value}"


class HandshakeWatch:
    """A socket hook that also monitors each socket's handshakes, to explain a silent broker.

    Use it as `configure_socket` on clients that share a context you own; `failure()` says why
    no handshake succeeded, and `close()` must run before that context is terminated.
    """

    def __init__(self, inner: SocketHook | None = None) -> None:
        self._inner = inner
        self._monitors: list[zmq.Socket[bytes]] = []
        self._succeeded = False
        self._failure: tuple[int, str] | None = None  # (how specific, description)

    def __call__(self, sock: zmq.Socket[bytes]) -> None:
        if self._inner is not None:
            self._inner(sock)
        # pyzmq's default address is named after the socket's descriptor, which a socket opened
        # after a close may reuse while the old monitor endpoint is still bound: name our own.
        address = f"inproc://titanic-handshake-watch-{id(self):x}-{len(self._monitors)}"
        self._monitors.append(sock.get_monitor_socket(_CLIENT_EVENTS, addr=address))

    def failure(self) -> str | None:
        """Why the handshakes failed, if some failed and none succeeded; else None."""
        for monitor in self._monitors:
            while monitor.poll(0):
                event = parse_monitor_message(monitor.recv_multipart())
                kind, value = int(event["event"]), int(event["value"])
                if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._succeeded = True
                    continue
                # A refused key says most; a mechanism mismatch next; a reconnection cut short
                # (NO_DETAIL) least: keep the most telling failure seen.
                rank = (2 if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH else
                        1 if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH else 0)
                if self._failure is None or rank > self._failure[0]:
                    self._failure = (rank, describe_handshake_failure(
                        kind, value, curve=self._inner is not None))
        if self._succeeded or self._failure is None:
            return None
        return self._failure[1]

    def close(self) -> None:
        """Close the monitor sockets."""
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()


# -- the server side ----------------------------------------------------------------------------

class LogBudget:
    """At most `lines` log lines per `window` seconds; the rest are only counted."""

    def __init__(self, lines: int = 10, window: float = 10.0) -> None:
        self.lines = lines
        self.window = window
        self._window_end = 0.0
        self._used = 0
        self.suppressed = 0

    def allow(self) -> bool:
        """True if a line may be logged now (counts it); False if over budget."""
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end = now + self.window
            self._used = 0
        if self._used < self.lines:
            self._used += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        """Lines suppressed since the last call."""
        count, self.suppressed = self.suppressed, 0
        return count


class AllowedKeys:
    """The public keys in a folder's `*.key` files, read again when the folder changes.

    A change is noticed by each file's name, inode, size and nanosecond times. Where the file
    system's clock is coarse, a key file rewritten in place within one tick keeps all of them, so
    a folder holding a file changed within the last two seconds is read again (at most every
    0.1 s) until it is older: git's "racily clean" rule.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, int, int, int, int], ...] | None = None
        self._racy = False
        self._read_at = 0
        self._unreadable = False
        self._keys: frozenset[bytes] = frozenset()

    def keys(self) -> frozenset[bytes]:
        """The allowed Z85 public keys now."""
        with self._lock:
            stamp = self._scan()
            if stamp is None:
                if self._stamp is not None or not self._unreadable:
                    log.warning("allowed-keys folder %s cannot be read: refusing every key",
                                self.folder)
                self._stamp, self._keys, self._unreadable = None, frozenset(), True
            elif stamp != self._stamp or (
                    self._racy and time.time_ns() - self._read_at >= _RACY_REREAD_NS):
                self._unreadable = False
                self._read(stamp)
            return self._keys

    def _scan(self) -> tuple[tuple[str, int, int, int, int], ...] | None:
        entries = []
        try:
            with os.scandir(self.folder) as found:
                for entry in found:
                    if entry.name.endswith(".key") and entry.is_file():
                        st = entry.stat()
                        entries.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns,
                                        st.st_ctime_ns))
        except OSError:
            return None
        return tuple(sorted(entries))

    def _read(self, stamp: tuple[tuple[str, int, int, int, int], ...]) -> None:
        read_at = time.time_ns()
        keys = set()
        for name, *_ in stamp:
            try:
                keys.add(load_public_key(self.folder / name))
            except CurveKeyError as exc:
                log.warning("ignoring %s", exc)
        changed = frozenset(keys) != self._keys or self._stamp is None
        self._keys, self._stamp, self._read_at = frozenset(keys), stamp, read_at
        self._racy = any(read_at - max(mtime, ctime) < _RACY_NS
                         for _, _, _, mtime, ctime in stamp)
        if changed:
            log.info("allowed CURVE keys: %d from %s", len(keys), self.folder)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this Z85 public key allowed?"""
        return key in self.keys()


class _CountingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, logging and counting each refusal with the peer's address and key."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]],
                 folders: dict[str, Path]) -> None:
        super().__init__(context, log=logging.getLogger("titanic.security.zap"))
        self.refused = 0
        self.admitted = 0
        self._folders = folders
        self._budget = LogBudget()
        self._peer = ("?", "?", "?")
        self.separate = False  # set when a socket serves workers only

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # One ZAP request at a time on this thread: the reply below belongs to this peer.
        domain = msg[2].decode("utf-8", "replace") if len(msg) > 2 else "?"
        address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        key = z85.encode(msg[6]).decode() if len(msg) > 6 and len(msg[6]) == 32 else "?"
        self._peer = (domain, address, key)
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code == b"200":
            self.admitted += 1
        else:
            self.refused += 1
            if self._budget.allow():
                domain, address, key = self._peer
                suppressed = self._budget.take_suppressed()
                log.warning("refused CURVE peer at %s on the %s endpoint: key %s is not in %s "
                            "(%s)%s", address, self._role(domain), key,
                            self._folders.get(domain, "?"),
                            status_text.decode("utf-8", "replace"),
                            f"; {suppressed} more refusals not logged" if suppressed else "")
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def _role(self, domain: str) -> str:
        if domain == WORKER_ZAP_DOMAIN:
            return "worker"
        return "client" if self.separate else "broker's"


class _Admitted:
    """A ZAP credentials provider: a key in any of these folders is admitted."""

    def __init__(self, *folders: AllowedKeys | None) -> None:
        self._folders = [folder for folder in folders if folder is not None]

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this Z85 public key in one of the folders?"""
        return any(key in folder.keys() for folder in self._folders)


class CurveServer:
    """The broker's side of CURVE: its key pair, and who may connect (folders of public keys).

    `allowed` admits peers on the client endpoint (the only one when there is one);
    `workers_allowed` admits peers on a separate worker endpoint, and defaults to `allowed`.
    `admin` holds the trusted keys (dispatchers, operators), admitted on every endpoint: a client
    with one may see every stored request, a worker with one may learn its callers' keys.
    """

    def __init__(self, keys: KeyPair, allowed: Path, *, workers_allowed: Path | None = None,
                 admin: Path | None = None) -> None:
        for folder in (allowed, workers_allowed, admin):
            if folder is not None and not folder.is_dir():
                raise CurveKeyError(f"allowed-keys folder {folder} "
                                    + ("is a file" if folder.exists() else "does not exist"))
        self.keys = keys
        self.allowed = AllowedKeys(allowed)
        self.workers_allowed = (AllowedKeys(workers_allowed) if workers_allowed is not None
                                else self.allowed)
        self.admin = AllowedKeys(admin) if admin is not None else None
        self._authenticator: _CountingAuthenticator | None = None

    def admin_keys(self) -> frozenset[bytes]:
        """The Z85 public keys in the admin folder now (none without one)."""
        return self.admin.keys() if self.admin is not None else frozenset()

    @property
    def refused(self) -> int:
        """Peers refused by ZAP so far."""
        return self._authenticator.refused if self._authenticator else 0

    @property
    def admitted(self) -> int:
        """Peers admitted by ZAP so far."""
        return self._authenticator.admitted if self._authenticator else 0

    def start(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Start the ZAP handler on the broker's context (before binding); one per context."""
        for allowed in {id(a): a for a in (self.allowed, self.workers_allowed)}.values():
            if not allowed.keys():
                log.warning("no public keys in %s: every peer there will be refused",
                            allowed.folder)
        authenticator = _CountingAuthenticator(context, {
            ZAP_DOMAIN: self.allowed.folder, WORKER_ZAP_DOMAIN: self.workers_allowed.folder})
        authenticator.start()
        authenticator.configure_curve_callback(
            ZAP_DOMAIN, credentials_provider=_Admitted(self.allowed, self.admin))
        authenticator.configure_curve_callback(
            WORKER_ZAP_DOMAIN, credentials_provider=_Admitted(self.workers_allowed, self.admin))
        self._authenticator = authenticator

    def configure(self, sock: zmq.Socket[bytes], *, workers: bool = False) -> None:
        """Make a server socket require CURVE and ask ZAP about every peer.

        `zap_enforce_domain`: without it libzmq admits every CURVE peer, allowed or not, when no
        ZAP handler answers (say, the handler thread died).
        """
        sock.zap_domain = (WORKER_ZAP_DOMAIN if workers else ZAP_DOMAIN).encode()
        if workers and self._authenticator is not None:
            self._authenticator.separate = True
        sock.zap_enforce_domain = True
        sock.curve_server = True
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret

    def stop(self) -> None:
        """Stop the ZAP handler."""
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
