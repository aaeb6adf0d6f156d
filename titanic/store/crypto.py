"""Request and reply bodies encrypted at rest: AES-256-GCM from the `cryptography` package.

A store key file holds one or more keys, one per line as 64 hexadecimal digits (lines starting
with `#` are comments). The first key seals what is written; every key in the file opens what
was written with it, so a key is rotated by putting a new one first, re-sealing the stored rows
(`titanic db rekey`), then removing the old one.

A sealed body is `0xE1`, the key's 4-byte id (the start of its SHA-256), a 12-byte random nonce,
then the packed frames (titanic.store.frames) encrypted and authenticated, with the request's
UUID and the column's name as associated data: a body copied into another row or column fails
to open. A plain packing starts with its frame count as a big-endian u32, so its first byte is
0xE1 only with more than 3.7 billion frames: plaintext rows written before the key was given
stay readable beside sealed ones.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from titanic.errors import StoreError, StoreKeyError
from titanic.store.frames import decode_frames, encode_frames

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
SEALED = 0xE1
_MARK = bytes([SEALED])
_ID_BYTES = 4
_HEADER = 1 + _ID_BYTES + NONCE_BYTES
#: Associated data naming the column a body belongs to.
REQUEST = b"request"
REPLY = b"reply"


def key_id(key: bytes) -> bytes:
    """The 4-byte id a sealed body names its key by."""
    return hashlib.sha256(key).digest()[:_ID_BYTES]


def is_sealed(blob: bytes) -> bool:
    """Whether a stored body is sealed (else it is a plain frame packing)."""
    return len(blob) > 0 and blob[0] == SEALED


class PlainBodies:
    """Bodies stored as plain frame packings (no store key); a sealed one cannot be opened."""

    sealing = False
    #: The id of the key that seals (None: bodies are stored plain).
    current_id: bytes | None = None

    def pack(self, request_id: str, column: bytes, frames: Sequence[bytes]) -> bytes:
        """The frames as stored."""
        return encode_frames(frames)

    def unpack(self, request_id: str, column: bytes, blob: bytes) -> tuple[bytes, ...]:
        """The frames of a stored body."""
        if blob[:1] == _MARK:
            raise StoreError(f"the {column.decode()} of request {request_id} is encrypted: "
                             "give the store key (--store-key)")
        return decode_frames(blob)


class SealedBodies(PlainBodies):
    """Bodies sealed with AES-256-GCM under the first of `keys`; any of them opens."""

    sealing = True

    def __init__(self, keys: Sequence[bytes]) -> None:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:
            raise StoreKeyError("encryption at rest needs the 'cryptography' package: "
                                "pip install 'titanic-zmq[encryption]'") from exc
        if not keys:
            raise StoreKeyError("no store key given")
        self._ciphers: dict[bytes, AESGCM] = {key_id(key): AESGCM(key) for key in keys}
        self.current_id = key_id(keys[0])
        self._seal = self._ciphers[self.current_id]
        self._unopenable = (InvalidTag, ValueError)  # altered or truncated
        self._prefix = _MARK + self.current_id

    def pack(self, request_id: str, column: bytes, frames: Sequence[bytes]) -> bytes:
        """The frames, packed and sealed under the current key."""
        nonce = os.urandom(NONCE_BYTES)
        header = self._prefix + nonce
        return header + self._seal.encrypt(nonce, encode_frames(frames),
                                           _associated(header, request_id, column))

    def unpack(self, request_id: str, column: bytes, blob: bytes) -> tuple[bytes, ...]:
        """The frames of a stored body, sealed (by any of our keys) or plain."""
        if blob[:1] != _MARK:
            return decode_frames(blob)
        cipher = self._ciphers.get(blob[1:1 + _ID_BYTES])
        if cipher is None:
            raise StoreError(f"the {column.decode()} of request {request_id} is sealed with a "
                             f"key not in the store key file (key id {blob[1:5].hex()})")
        header = blob[:_HEADER]
        try:
            packed = cipher.decrypt(header[1 + _ID_BYTES:], blob[_HEADER:],
                                    _associated(header, request_id, column))
        except self._unopenable as exc:
            raise StoreError(f"the {column.decode()} of request {request_id} fails to open: "
                             "altered, moved from another row, or truncated") from exc
        return decode_frames(packed)

    def is_current(self, blob: bytes | None) -> bool:
        """Whether a stored body is absent or already sealed under the current key."""
        return blob is None or blob[:1 + _ID_BYTES] == self._prefix


def _associated(header: bytes, request_id: str, column: bytes) -> bytes:
    return header + request_id.encode() + b"/" + column


def bodies_for(key_file: str | Path | None) -> PlainBodies:
    """The body codec for a store key file, or plain bodies without one."""
    if key_file is None:
        return PlainBodies()
    return SealedBodies(load_store_keys(key_file))


# -- key files ----------------------------------------------------------------------------------

def load_store_keys(path: str | Path) -> list[bytes]:
    """The keys in a store key file, the current one first; StoreKeyError if unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise StoreKeyError(f"store key file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreKeyError(f"cannot read store key file {path}: {exc}") from exc
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = bytes.fromhex(line)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise StoreKeyError(f"{path}, line {number}: not a store key (64 hex digits)")
        keys.append(key)
    if not keys:
        raise StoreKeyError(f"store key file {path} holds no key")
    from titanic.security.keys import warn_if_readable_by_others  # zmq: only with a key file

    warn_if_readable_by_others(path, "store key file")
    return keys


def write_store_key(path: str | Path, *, rotate: bool = False) -> bytes:
    """Make a new key: a new file (mode 0600), or with `rotate` the new first key of an existing
    one, the old keys kept after it to open what they sealed. Returns the new key's id."""
    path = Path(path)
    key = os.urandom(KEY_BYTES)
    if rotate:
        old = load_store_keys(path)
        lines = [key.hex(), *(k.hex() for k in old)]
        temporary = path.with_name(f".{path.name}.new")
        _write_private(temporary, lines)
        os.replace(temporary, path)
        return key_id(key)
    if path.exists():
        raise StoreKeyError(f"{path} exists: not overwriting it (--rotate adds a key to it)")
    _write_private(path, [key.hex()])
    return key_id(key)


def _write_private(path: Path, lines: list[str]) -> None:
    header = "# titanic store keys: the first seals, all open; keep this file secret\n"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise StoreKeyError(f"{path} exists: remove it and try again") from exc
    except OSError as exc:
        raise StoreKeyError(f"cannot write {path}: {exc.strerror or exc}") from exc
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(header + "".join(f"{line}\n" for line in lines))
