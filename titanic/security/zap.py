"""The broker's side of CURVE: who may connect, from folders of public keys, and the ZAP handler.

The broker admits a peer whose public key is in any `*.key` file of its allowed folder; the folder
is read again whenever it changes, so keys are added and removed without a restart (a removed key
stops new connections; an open one stays until it closes).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from titanic._zmq import LogBudget
from titanic.errors import CurveKeyError
from titanic.security.keys import KeyPair, load_public_key

log = logging.getLogger("titanic.security")

#: ZAP domain of the broker's client endpoint (and of its only endpoint when there is one).
ZAP_DOMAIN = "titanic"
#: ZAP domain of the broker's separate worker endpoint.
WORKER_ZAP_DOMAIN = "titanic.workers"
#: A key file changed less than this long before the folder was read may change again without
#: its size or time stamp moving (coarse file-system clocks): such a folder is read again next time.
_RACY_NS = 2_000_000_000
#: ...but no more often than this, so a burst of handshakes does not read a big folder each time.
_RACY_REREAD_NS = 100_000_000


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

    def __contains__(self, key: object) -> bool:
        """Whether `key` (a Z85 public key) is allowed now."""
        return key in self.keys()

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
    """pyzmq's ZAP thread, logging and counting each refusal with the peer's address and key.

    Only pyzmq's public API: `handle_zap_message` is wrapped to note the peer and, once pyzmq
    has answered it, to count the answer, which the credentials providers (`_Admitted`) record
    as they judge the key; a request refused before its key is judged (malformed, or for a
    domain without a provider) is counted as refused.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]],
                 folders: dict[str, Path]) -> None:
        super().__init__(context, log=logging.getLogger("titanic.security.zap"))
        self.refused = 0
        self.admitted = 0
        self._folders = folders
        self._budget = LogBudget()
        self._verdict: bool | None = None  # the key's, for the request being answered
        self.separate = False  # set when a socket serves workers only

    def record(self, admitted: bool) -> None:
        """A credentials provider's verdict on the key of the request being answered."""
        self._verdict = admitted

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # One ZAP request at a time on this thread: the verdict recorded belongs to this peer.
        self._verdict = None
        await super().handle_zap_message(msg)
        if self._verdict:
            self.admitted += 1
            return
        self.refused += 1
        if self._budget.allow():
            domain = msg[2].decode("utf-8", "replace") if len(msg) > 2 else "?"
            address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
            key = z85.encode(msg[6]).decode() if len(msg) > 6 and len(msg[6]) == 32 else "?"
            why = (f"is not in {self._folders.get(domain, '?')}" if self._verdict is False
                   else "was not checked (a malformed ZAP request, or an unknown domain)")
            suppressed = self._budget.take_suppressed()
            log.warning("refused CURVE peer at %s on the %s endpoint: key %s %s%s", address,
                        self._role(domain), key, why,
                        f"; {suppressed} more refusals not logged" if suppressed else "")

    def _role(self, domain: str) -> str:
        if domain == WORKER_ZAP_DOMAIN:
            return "worker"
        return "client" if self.separate else "broker's"


class _Admitted:
    """A ZAP credentials provider: a key in any of these folders is admitted; each verdict is
    told to `record` (the authenticator's count)."""

    def __init__(self, *folders: AllowedKeys | None, record: Callable[[bool], None]) -> None:
        self._folders = [folder for folder in folders if folder is not None]
        self._record = record

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this Z85 public key in one of the folders?"""
        admitted = any(key in folder for folder in self._folders)
        self._record(admitted)
        return admitted


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
        authenticator.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_Admitted(
            self.allowed, self.admin, record=authenticator.record))
        authenticator.configure_curve_callback(WORKER_ZAP_DOMAIN, credentials_provider=_Admitted(
            self.workers_allowed, self.admin, record=authenticator.record))
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
