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
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from titanic.errors import CurveKeyError

log = logging.getLogger(__name__)

ZAP_DOMAIN = "titanic"
SocketHook = Callable[[zmq.Socket[bytes]], None]


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves Z85-encoded."""

    public: bytes
    secret: bytes


def write_keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """Make a key pair: `NAME.key` (public, 0644) and `NAME.key_secret` (0600)."""
    public, secret = zmq.curve_keypair()
    folder.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_file, secret_file):
        if path.exists():
            raise CurveKeyError(f"{path} exists: not overwriting a key")
    banner = f"#   titanic CURVE key {name}, made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
    _write(public_file, banner + _body(public, None), 0o644)
    _write(secret_file, banner + "#   SECRET: keep this file private\n" + _body(public, secret),
           0o600)
    return public_file, secret_file


def _body(public: bytes, secret: bytes | None) -> str:
    lines = ["metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    os.chmod(path, mode)  # whatever the umask said


def load_keypair(secret_file: str | Path) -> KeyPair:
    """A key pair from a `.key_secret` file."""
    public, secret = _load(secret_file)
    if not secret:
        raise CurveKeyError(f"{secret_file} holds no secret key")
    return KeyPair(public, secret)


def load_public_key(key_file: str | Path) -> bytes:
    """The public key from a `.key` or `.key_secret` file."""
    return _load(key_file)[0]


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read CURVE key {path}: {exc}") from exc
    if not public or len(public) != 40:
        raise CurveKeyError(f"{path} holds no CURVE public key")
    return public, secret


def client_hook(server_public: bytes, keys: KeyPair) -> SocketHook:
    """Set a client or worker socket to speak CURVE to a server with this public key."""
    def configure(sock: zmq.Socket[bytes]) -> None:
        sock.curve_serverkey = server_public
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret

    return configure


class _AllowedKeys:
    """The public keys in a folder's `*.key` files, read again when the folder changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._keys: set[bytes] = set()

    def _current(self) -> set[bytes]:
        try:
            stat = self.folder.stat()
            stamp = (stat.st_mtime, len(list(self.folder.glob("*.key"))))
        except OSError:
            return set()
        with self._lock:
            if stamp != self._stamp:
                self._keys = set()
                for path in self.folder.glob("*.key"):
                    try:
                        self._keys.add(load_public_key(path))
                    except CurveKeyError as exc:
                        log.warning("ignoring %s", exc)
                self._stamp = stamp
                log.info("allowed CURVE keys: %d from %s", len(self._keys), self.folder)
            return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this Z85 public key allowed?"""
        return key in self._current()


class _CountingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, logging and counting each refusal with the peer's address."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        super().__init__(context, log=logging.getLogger("titanic.security.zap"))
        self.refused = 0
        self.admitted = 0
        self._address = "?"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code == b"200":
            self.admitted += 1
        else:
            self.refused += 1
            log.warning("refused CURVE peer at %s: %s", self._address,
                        status_text.decode("utf-8", "replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


class CurveServer:
    """The broker's side of CURVE: its key pair, and who may connect (a folder of public keys)."""

    def __init__(self, keys: KeyPair, allowed: Path) -> None:
        self.keys = keys
        self.allowed = _AllowedKeys(allowed)
        self._authenticator: _CountingAuthenticator | None = None

    @property
    def refused(self) -> int:
        """Peers refused so far."""
        return self._authenticator.refused if self._authenticator else 0

    def start(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Start the ZAP handler on the broker's context (before binding)."""
        authenticator = _CountingAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.allowed)
        self._authenticator = authenticator

    def configure(self, sock: zmq.Socket[bytes]) -> None:
        """Make a server socket require CURVE and ask ZAP about every peer."""
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.curve_server = True
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret

    def stop(self) -> None:
        """Stop the ZAP handler."""
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

