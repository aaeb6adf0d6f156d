"""One store per broker network: a dispatcher refuses to start beside one on another store.

Every dispatcher serves `titanic.store`, answering `200`, its store's identity (kept in the
database, so a PostgreSQL standby shares its primary's) and its location. Before it registers,
a starting dispatcher asks each of its brokers whether anyone serves `titanic.store` (mmi.service)
and if so which store it is; an answer naming another store stops it with StoreMismatchError.
Two dispatchers started at the same moment on different stores can both pass: the check guards
against the configuration mistake, it is not a lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import zmq

from titanic._zmq import SocketHook
from titanic.client.mdp import Client
from titanic.errors import (
    HandshakeRefusedError,
    ProtocolError,
    StoreMismatchError,
    TitanicTimeoutError,
)
from titanic.protocol import mmi, tsp
from titanic.protocol.mdp import Dialect, Frames
from titanic.store import StoreIdentity

log = logging.getLogger("titanic.dispatcher")


def store_reply(identity: StoreIdentity, max_request_bytes: int) -> Frames:
    """titanic.store's answer: `200`, the identity, the location, the largest request body
    the store takes."""
    extensions = frozenset({tsp.WAIT_SERVICE, tsp.BATCH_FORM, tsp.FOLLOW_FORM,
                            tsp.OPTIONS_EXTENSION, tsp.CANCEL_SERVICE, tsp.CANCELLED_SERVICE})
    return tsp.store_answer(tsp.ServingStore(identity.id, identity.location, max_request_bytes,
                                             extensions))


def parse_store_reply(frames: Frames) -> StoreIdentity:
    """The identity a titanic.store answer names; ProtocolError if it names none."""
    found = tsp.parse_store_answer(frames)
    return StoreIdentity(found.id, found.location)


def serving_store(broker: str, *, dialect: Dialect, timeout: float,
                  context: zmq.Context[zmq.Socket[bytes]],
                  configure_socket: SocketHook | None = None) -> StoreIdentity | None:
    """The store of the dispatchers serving at `broker`; None if none serves there, or the
    broker (or the dispatcher) does not answer in time."""
    with Client(broker, dialect=dialect, timeout=timeout, retries=0, context=context,
                configure_socket=configure_socket) as client:
        try:
            if client.request(mmi.SERVICE, tsp.STORE_SERVICE)[:1] != [mmi.FOUND]:
                return None
            # An empty body frame: the guide's broker asserts that every request has one.
            return parse_store_reply(client.request(tsp.STORE_SERVICE, b""))
        except (TitanicTimeoutError, HandshakeRefusedError) as exc:
            # A daemon keeps trying its brokers (a key allowed later lets it in): not checked.
            log.warning("broker %s did not say which store serves it (%s): not checked",
                        broker, exc)
        except ProtocolError as exc:
            log.warning("broker %s: %s: not checked", broker, exc)
        return None


def check_store_identity(ours: StoreIdentity, brokers: Sequence[str], *, dialect: Dialect,
                         timeout: float, context: zmq.Context[zmq.Socket[bytes]],
                         configure_socket: SocketHook | None = None) -> None:
    """StoreMismatchError, naming both stores, if a dispatcher on another store serves at any of
    `brokers`."""
    for broker in brokers:
        theirs = serving_store(broker, dialect=dialect, timeout=timeout, context=context,
                               configure_socket=configure_socket)
        if theirs is not None and theirs.id != ours.id:
            raise StoreMismatchError(
                f"this dispatcher's store {ours.id} ({ours.location}) is not the store "
                f"{theirs.id} ({theirs.location}) already serving at {broker}: dispatchers on "
                f"the same brokers must share one store")
