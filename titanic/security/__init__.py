"""CurveZMQ for titanic: key files (`keys`), handshake diagnosis (`handshake`), and the broker's
ZAP gatekeeper over folders of allowed keys (`zap`)."""

from __future__ import annotations

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

__all__ = [
    "KEY_NAME", "WORKER_ZAP_DOMAIN", "ZAP_DOMAIN", "AllowedKeys", "CurveServer",
    "KeyPair", "client_hook", "describe_handshake_failure", "load_client_hook", "load_keypair",
    "load_public_key", "warn_if_readable_by_others", "write_keypair",
]
