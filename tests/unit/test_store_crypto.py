"""Bodies sealed at rest: what a stolen blob shows, what moving or altering one does, key files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from titanic.errors import StoreError, StoreKeyError
from titanic.store.crypto import (
    REPLY,
    REQUEST,
    PlainBodies,
    SealedBodies,
    is_sealed,
    key_id,
    load_store_keys,
    write_store_key,
)

ID, OTHER_ID = "0" * 31 + "1", "0" * 31 + "2"
FRAMES = (b"card number 4111 1111 1111 1111", b"", b"\x00\xff")


@pytest.fixture
def sealed() -> SealedBodies:
    return SealedBodies([bytes(range(32))])


def test_a_sealed_body_opens_only_as_itself(sealed: SealedBodies) -> None:
    blob = sealed.pack(ID, REQUEST, FRAMES)
    assert is_sealed(blob) and b"4111" not in blob
    assert sealed.unpack(ID, REQUEST, blob) == FRAMES
    assert sealed.pack(ID, REQUEST, FRAMES) != blob  # a fresh nonce every time
    with pytest.raises(StoreError, match="fails to open"):
        sealed.unpack(OTHER_ID, REQUEST, blob)  # copied into another row
    with pytest.raises(StoreError, match="fails to open"):
        sealed.unpack(ID, REPLY, blob)  # or into the reply column
    altered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(StoreError, match="fails to open"):
        sealed.unpack(ID, REQUEST, altered)
    with pytest.raises(StoreError, match="fails to open"):
        sealed.unpack(ID, REQUEST, blob[:20])


def test_plain_and_sealed_bodies_live_side_by_side(sealed: SealedBodies) -> None:
    plain = PlainBodies().pack(ID, REQUEST, FRAMES)
    assert not is_sealed(plain)
    assert sealed.unpack(ID, REQUEST, plain) == FRAMES  # written before the key was given
    assert not sealed.is_current(plain) and sealed.is_current(None)
    with pytest.raises(StoreError, match="encrypted: give the store key"):
        PlainBodies().unpack(ID, REQUEST, sealed.pack(ID, REQUEST, FRAMES))
    with pytest.raises(StoreError, match="key not in the store key file"):
        SealedBodies([b"\x01" * 32]).unpack(ID, REQUEST, sealed.pack(ID, REQUEST, FRAMES))


def test_rotation_keeps_old_bodies_open_and_seals_new_ones_under_the_new_key(
        tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    first = write_store_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    old = SealedBodies(load_store_keys(path))
    blob = old.pack(ID, REPLY, FRAMES)
    with pytest.raises(StoreKeyError, match="not overwriting"):
        write_store_key(path)
    second = write_store_key(path, rotate=True)
    keys = load_store_keys(path)
    assert [key_id(key) for key in keys] == [second, first]
    rotated = SealedBodies(keys)
    assert rotated.unpack(ID, REPLY, blob) == FRAMES
    assert not rotated.is_current(blob)
    assert rotated.is_current(rotated.pack(ID, REPLY, FRAMES))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(("text", "complaint"), [
    ("", "holds no key"),
    ("# only a comment\n", "holds no key"),
    ("abcd\n", "line 1: not a store key"),
    ("# first\n" + "zz" * 32 + "\n", "line 2: not a store key"),
])
def test_malformed_key_files_are_clear_errors(tmp_path: Path, text: str,
                                              complaint: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(text)
    with pytest.raises(StoreKeyError, match=complaint):
        load_store_keys(path)
    with pytest.raises(StoreKeyError, match="does not exist"):
        load_store_keys(tmp_path / "absent.key")
