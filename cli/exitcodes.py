"""Exit codes of every titanic command; docs/cli.md lists them for users."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """What a titanic command's exit status means."""

    OK = 0
    ERROR = 1  # an error not covered below (one line on stderr says what)
    USAGE = 2  # bad options or arguments (click's own code)
    PENDING = 3  # the request is stored but has no reply yet
    UNKNOWN = 4  # no such request (never submitted, closed, or expired)
    FAILED = 5  # the request failed for good (attempts exhausted or expired undelivered)
    UNREACHABLE = 6  # no answer from the broker or service in time
    DATABASE = 7  # the database failed or has an unexpected schema
    KEY = 8  # a CURVE key file or allowed-keys folder is missing, unreadable or malformed
    REFUSED = 9  # the broker refused the security handshake (key not allowed, wrong server key,
    #              or CURVE on one side only)
    ADDRESS = 10  # an address to listen on cannot be bound (in use, or not this host's)
    INTERRUPTED = 130  # Ctrl-C (SIGINT) ended the command (128 + SIGINT, as shells report it)
