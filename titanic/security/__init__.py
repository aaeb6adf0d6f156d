"""CurveZMQ for titanic: key files (`keys`), handshake diagnosis (`handshake`), and the broker's
ZAP gatekeeper over folders of allowed keys (`zap`).

Each name is imported from its module on first use: a client that only diagnoses a handshake
(titanic.client.connect_watch) loads neither zmq.auth nor the gatekeeper's threads. It may
import the foundation (`titanic.errors`, `settings`, `_zmq`) and nothing else of titanic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from titanic._lazy import lazy_names

if TYPE_CHECKING:
    from titanic.security.handshake import describe_handshake_failure
    from titanic.security.keys import (
        KEY_NAME,
        KeyPair,
        client_hook,
        load_client_hook,
        load_keypair,
        load_public_key,
        warn_if_readable_by_others,
        write_keypair,
    )
    from titanic.security.zap import WORKER_ZAP_DOMAIN, ZAP_DOMAIN, AllowedKeys, CurveServer

#: Public names, and the module each comes from.
_LAZY = {
    "describe_handshake_failure": "titanic.security.handshake",
    "KEY_NAME": "titanic.security.keys",
    "KeyPair": "titanic.security.keys",
    "client_hook": "titanic.security.keys",
    "load_client_hook": "titanic.security.keys",
    "load_keypair": "titanic.security.keys",
    "load_public_key": "titanic.security.keys",
    "warn_if_readable_by_others": "titanic.security.keys",
    "write_keypair": "titanic.security.keys",
    "WORKER_ZAP_DOMAIN": "titanic.security.zap",
    "ZAP_DOMAIN": "titanic.security.zap",
    "AllowedKeys": "titanic.security.zap",
    "CurveServer": "titanic.security.zap",
}

__getattr__ = lazy_names(__name__, _LAZY)


__all__ = [
    "KEY_NAME", "WORKER_ZAP_DOMAIN", "ZAP_DOMAIN", "AllowedKeys", "CurveServer",
    "KeyPair", "client_hook", "describe_handshake_failure", "load_client_hook", "load_keypair",
    "load_public_key", "warn_if_readable_by_others", "write_keypair",
]
