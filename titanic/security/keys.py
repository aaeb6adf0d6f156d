"""CURVE key files and the client side of a socket.

Key files use the ZeroMQ certificate format that `zmq.auth.load_certificate` reads: `NAME.key`
holds the public key, `NAME.key_secret` both keys and is created readable by its owner only.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from titanic._zmq import SocketHook
from titanic.errors import CurveKeyError

log = logging.getLogger("titanic.security")

#: What a key name may be: it becomes a file name.
KEY_NAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves Z85-encoded."""

    public: bytes
    secret: bytes


def write_keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """Make a key pair: `NAME.key` (public, 0644) and `NAME.key_secret` (0600); never overwrites."""
    if not KEY_NAME.match(name):
        raise CurveKeyError(f"bad key name {name!r}: use letters, digits, '_', '-' and '.', "
                            "not starting with '.' or '-'")
    public, secret = zmq.curve_keypair()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CurveKeyError(f"cannot make the key folder {folder}: {exc.strerror}") from exc
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_file, secret_file):
        if os.path.lexists(path):  # a symlink too, dangling or not: O_EXCL would refuse it
            raise CurveKeyError(f"{path} exists: not overwriting a key")
    banner = f"#   titanic CURVE key {name}, made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
    _write(secret_file, banner + "#   SECRET: keep this file private\n" + _body(public, secret),
           0o600)
    try:
        _write(public_file, banner + _body(public, None), 0o644)
    except BaseException:
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
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:  # made meanwhile by someone else
        raise CurveKeyError(f"{path} exists: not overwriting a key") from exc
    except OSError as exc:
        raise CurveKeyError(f"cannot write {path}: {exc.strerror}") from exc
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
