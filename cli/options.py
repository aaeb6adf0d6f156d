"""Options shared by several commands, each with its TITANIC_* environment variable.

Imported by every command, the client-only ones included: it imports neither ZeroMQ nor the
security package at module level (each is imported where it is used), and never the store.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import click
from click.core import ParameterSource

from titanic.errors import (
    BindError,
    CurveKeyError,
    EndpointError,
    HandshakeRefusedError,
    StoreError,
    StoreKeyError,
    TitanicError,
    TitanicTimeoutError,
)
from titanic.logs import FORMATS, LEVELS, level_number, make_formatter
from titanic.protocol.mdp import Dialect
from titanic.protocol.tsp import canonical_uuid
from titanic.settings import CLIENT_RETRIES, CLIENT_TIMEOUT_S, DEFAULT_BROKER, quoted
from titanic_cli.exitcodes import Exit

if TYPE_CHECKING:
    import zmq

    from titanic._zmq import SocketHook
    from titanic.security import CurveServer

#: A decorator that adds options and passes the command's function on unchanged keeps its type.
F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")


class UsageProblem(Exception):
    """Options that do not fit together; reported as one line with exit status 2."""


#: Units of a --in duration, in seconds.
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def not_before_option(delay: str | None, at: str | None) -> datetime | None:
    """The time --in DURATION (30s, 5m, 2h, 1d, or a sum such as 1h30m) or --at TIME (ISO
    8601 with its time zone) names, aware; UsageProblem for a malformed value, a time without
    a zone, or both options."""
    if delay is not None and at is not None:
        raise UsageProblem("give --in or --at, not both")
    if delay is not None:
        parts = re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+", delay.strip().lower())
        if parts is None:
            raise UsageProblem(f"--in {shown(delay)} is not a duration such as 30s, 5m, 2h, "
                               "1d or 1h30m")
        seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in
                      re.findall(r"(\d+(?:\.\d+)?)([smhd])", delay.strip().lower()))
        if seconds > 3650 * 86400:
            raise UsageProblem(f"--in {shown(delay)} is more than ten years away")
        return datetime.now(UTC) + timedelta(seconds=seconds)
    if at is None:
        return None
    try:
        moment = datetime.fromisoformat(at.strip().replace("z", "Z"))
    except ValueError:
        raise UsageProblem(f"--at {shown(at)} is not an ISO 8601 time such as "
                           "2026-12-24T18:00:00Z") from None
    if moment.tzinfo is None:
        raise UsageProblem(f"--at {shown(at)} has no time zone: add Z (UTC) or an offset "
                           "such as +01:00")
    return moment


def split_brokers(ctx: click.Context, param: click.Parameter,
                  value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Every --broker value (or TITANIC_BROKER) split on commas; empty parts dropped."""
    if value is None:
        return None
    endpoints = tuple(part.strip() for item in value for part in item.split(",") if part.strip())
    if value and not endpoints:
        raise click.BadParameter("no broker endpoint given", ctx=ctx, param=param)
    return endpoints or None


def broker_option(func: F) -> F:
    """--broker ENDPOINT, repeatable or comma-separated (TITANIC_BROKER)."""
    return click.option(
        "--broker",
        "-b",
        multiple=True,
        envvar="TITANIC_BROKER",
        default=(DEFAULT_BROKER,),
        show_default=True,
        callback=split_brokers,
        help="Broker endpoint to connect to; repeatable, or comma-separated: with several, a "
        "broker that does not answer is left for the next [env TITANIC_BROKER].",
    )(func)


#: The protocols a client or worker may speak, by their --mdp name.
DIALECTS = {"7": Dialect.MDP01, "18": Dialect.MDP02, "majortomo": Dialect.MAJORTOMO}

dialect_option = click.option(
    "--mdp",
    "dialect_name",
    type=click.Choice(sorted(DIALECTS)),
    default="7",
    show_default=True,
    envvar="TITANIC_MDP",
    help="Protocol spoken: 7 (7/MDP, MDP 0.1), 18 (18/MDP) or majortomo's 0.2 variant "
    "[env TITANIC_MDP].",
)


def client_options(func: F) -> F:
    """--timeout and --retries (TITANIC_TIMEOUT, TITANIC_RETRIES) for commands that send."""
    func = click.option(
        "--retries",
        envvar="TITANIC_RETRIES",
        type=click.IntRange(min=0),
        default=CLIENT_RETRIES,
        show_default=True,
        help="Resends after a timeout, each on a new socket [env TITANIC_RETRIES].",
    )(func)
    return click.option(
        "--timeout",
        envvar="TITANIC_TIMEOUT",
        type=click.FloatRange(min=0.001),
        default=CLIENT_TIMEOUT_S,
        show_default=True,
        help="Seconds to wait for each reply [env TITANIC_TIMEOUT].",
    )(func)


def configure_logging(verbosity: int) -> None:
    """Log to stderr: warnings by default, -v info, -vv every message."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@dataclass(frozen=True)
class LogOptions:
    """A daemon's --log-format and --log-level as given; `apply()` sets them."""

    format: str = "text"
    level: str | None = None

    def apply(self, component: str, verbose: int = 0) -> None:
        """Format the root logger's lines for `component`; --log-level wins over -v, and a
        daemon logs start, stop and registrations (INFO) unless told otherwise."""
        root = logging.getLogger()
        if self.level is not None:
            root.setLevel(level_number(self.level))
        else:
            root.setLevel(logging.DEBUG if verbose else min(root.level, logging.INFO))
        if root.level > logging.DEBUG:  # alembic's set-up lines (plugins, context) only in debug
            logging.getLogger("alembic").setLevel(logging.WARNING)
        for handler in root.handlers:
            handler.setFormatter(make_formatter(self.format, component))

    def argv(self) -> list[str]:
        """The same options for a child command's command line."""
        return ["--log-format", self.format] + (["--log-level", self.level] if self.level
                                                 else [])


def log_options(func: Callable[..., R]) -> Callable[..., R]:
    """--log-format and --log-level (TITANIC_LOG_FORMAT, TITANIC_LOG_LEVEL), given to the
    command as `logs`, a LogOptions."""

    @functools.wraps(func)
    def wrapper(*args: Any, log_format: str, log_level: str | None, **kwargs: Any) -> R:
        return func(*args, logs=LogOptions(log_format, log_level), **kwargs)

    wrapper = click.option(
        "--log-level", type=click.Choice(LEVELS, case_sensitive=False), default=None,
        envvar="TITANIC_LOG_LEVEL",
        help="Least severe log lines written [env TITANIC_LOG_LEVEL; default: info, or debug "
        "with -v].",
    )(wrapper)
    return click.option(
        "--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
        envvar="TITANIC_LOG_FORMAT",
        help="Log lines as text, or as one JSON object per line with event, component, and "
        "the request's UUID and service where there is one [env TITANIC_LOG_FORMAT].",
    )(wrapper)


def _check_bind(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        from titanic.ops.metrics import parse_bind

        try:
            parse_bind(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    return value


def metrics_option(func: F) -> F:
    """--metrics-bind HOST:PORT (TITANIC_METRICS_BIND), given as `metrics_bind`."""
    return click.option(
        "--metrics-bind", metavar="HOST:PORT", default=None, envvar="TITANIC_METRICS_BIND",
        callback=_check_bind,
        help="Serve Prometheus metrics on http://HOST:PORT/metrics and a health check on "
        "/healthz (200 while serving, else 503) [env TITANIC_METRICS_BIND].",
    )(func)


def endpoint_error(endpoints: str, exc: zmq.ZMQError) -> BindError:
    """The one-line error for ZeroMQ endpoints that cannot be bound (exit 10): the endpoints and
    the system's reason, without pyzmq's repetition of the address."""
    import zmq

    reason = zmq.strerror(exc.errno) if exc.errno is not None else str(exc)
    return BindError(f"cannot bind {endpoints}: {reason}")


def fail(message: str, code: Exit) -> NoReturn:
    """Print one line on stderr and exit with a documented code."""
    click.echo(f"titanic: {message}", err=True)
    sys.exit(int(code))


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn titanic's exceptions into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (UsageProblem, EndpointError) as exc:
            fail(str(exc), Exit.USAGE)
        except (CurveKeyError, StoreKeyError) as exc:
            fail(str(exc), Exit.KEY)
        except HandshakeRefusedError as exc:
            fail(str(exc), Exit.REFUSED)
        except BindError as exc:
            fail(str(exc), Exit.ADDRESS)
        except TitanicTimeoutError as exc:
            fail(str(exc), Exit.UNREACHABLE)
        except StoreError as exc:
            fail(str(exc), Exit.DATABASE)
        except TitanicError as exc:
            fail(str(exc), Exit.ERROR)
        except KeyboardInterrupt:
            fail("interrupted", Exit.INTERRUPTED)
        except OSError as exc:
            fail(str(exc), Exit.ERROR)

    return wrapper


def shown(text: str) -> str:
    """An argument for a message, quoted: bytes that are not UTF-8 (which Python's command line
    keeps as lone surrogates) written as \\xNN escapes, never as a Python repr."""
    return quoted(text)


def utf8_argument(value: str, what: str, hint: str = "it is a name, in text") -> bytes:
    """A command-line argument as UTF-8 bytes; UsageProblem (exit 2) naming `what`, and ending
    with `hint`, if the argument's bytes are not UTF-8 text."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageProblem(f"{what} {shown(value)} is not UTF-8 text: {hint}") from None


#: What to do with a payload argument that is not UTF-8.
_BYTES_HINT = "give bytes that are not text in a file (@FILE) or on stdin (-)"


def read_payload(value: str, what: str = "PAYLOAD") -> bytes:
    """`-` is stdin, `@path` a file's content, `@@text` the literal `@text`; else the text
    (UTF-8; UsageProblem naming `what` if the argument is not UTF-8)."""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@@"):
        return utf8_argument(value[1:], what, _BYTES_HINT)
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            raise UsageProblem(f"cannot read {shown(value[1:])} ({what}): "
                               f"{exc.strerror}") from exc
    return utf8_argument(value, what, _BYTES_HINT)


def check_uuid(value: str, what: str = "UUID") -> str:
    """A request UUID from the command line as TSP writes it (32 lower-case hex digits);
    UsageProblem (exit 2) naming `what` for anything else."""
    found = canonical_uuid(value) if value.isascii() else None
    if found is None:
        raise UsageProblem(f"{what} {shown(value)} is not a request UUID: give 32 hex digits "
                           "or the 8-4-4-4-12 form")
    return found


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON object on stdout.")


def frames_json(frames: Sequence[bytes]) -> dict[str, Any]:
    """Frames for JSON output: as text when every frame is UTF-8, else all as base64."""
    try:
        return {"frames": [frame.decode("utf-8") for frame in frames], "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"frames": [base64.b64encode(frame).decode() for frame in frames],
                "encoding": "base64"}


def echo_json(value: object) -> None:
    """One JSON object on a line of stdout."""
    click.echo(json.dumps(value, ensure_ascii=False))


def given_on_command_line(name: str) -> bool:
    """Whether the running command's parameter `name` came from its command line, not from its
    environment variable or its default: a variable shared by several commands (one systemd
    EnvironmentFile, one shell) must not stop a command that has no use for it."""
    source = click.get_current_context().get_parameter_source(name)
    return source is ParameterSource.COMMANDLINE


def db_option(func: F) -> F:
    """--db URL (TITANIC_DATABASE_URL); the default is the per-user SQLite file."""
    return click.option(
        "--db",
        "db_url",
        envvar="TITANIC_DATABASE_URL",
        default=None,
        help="The database: a SQLite file's path (./data/titanic.db, /var/lib/titanic/t.db; "
        "its folder must exist), a SQLite URL as SQLAlchemy reads it (sqlite:///relative.db, "
        "sqlite:////absolute.db), or postgresql://user@host/db (the postgres extra) "
        "[env TITANIC_DATABASE_URL; default: $XDG_DATA_HOME/titanic/titanic.db].",
    )(func)


def store_key_option(func: F) -> F:
    """--store-key FILE (TITANIC_STORE_KEY): request and reply bodies encrypted at rest."""
    return click.option(
        "--store-key", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
        envvar="TITANIC_STORE_KEY", default=None,
        help="Key file sealing request and reply bodies in the database (AES-256-GCM; make one "
        "with 'titanic db keygen') [env TITANIC_STORE_KEY].",
    )(func)


# -- CURVE ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CurveOptions:
    """A client's or worker's CURVE options as given; `hook()` checks and loads them."""

    server_key: Path | None = None
    key: Path | None = None

    def hook(self) -> SocketHook | None:
        """The socket hook speaking CURVE, or None when CURVE is off; both options or neither."""
        if self.server_key is None and self.key is None:
            return None
        if self.server_key is None or self.key is None:
            given, missing = (("--curve-server-key", "--curve-key") if self.key is None
                              else ("--curve-key", "--curve-server-key"))
            raise UsageProblem(f"{given} needs {missing} too (TITANIC_CURVE_SERVER_KEY and "
                               "TITANIC_CURVE_KEY): CURVE takes both or neither")
        from titanic.security.keys import load_client_hook

        return load_client_hook(self.server_key, self.key)

    def argv(self) -> list[str]:
        """The same options for a child command's command line."""
        args = []
        if self.server_key is not None:
            args += ["--curve-server-key", str(self.server_key)]
        if self.key is not None:
            args += ["--curve-key", str(self.key)]
        return args


# Existence and kind are checked when the keys are loaded, to report them in one line (exit 8).
_KEY_FILE = click.Path(path_type=Path)
_KEY_FOLDER = click.Path(path_type=Path)


def curve_client_options(func: Callable[..., R]) -> Callable[..., R]:
    """--curve-server-key and --curve-key (TITANIC_CURVE_SERVER_KEY, TITANIC_CURVE_KEY), given
    to the command as `curve`, a CurveOptions."""

    @functools.wraps(func)
    def wrapper(*args: Any, curve_server_key: Path | None, curve_key: Path | None,
                **kwargs: Any) -> R:
        return func(*args, curve=CurveOptions(curve_server_key, curve_key), **kwargs)

    wrapper = click.option(
        "--curve-key", type=_KEY_FILE, metavar="FILE",
        envvar="TITANIC_CURVE_KEY", default=None,
        help="Our own CURVE key pair: a .key_secret file from `titanic keygen` "
        "[env TITANIC_CURVE_KEY].",
    )(wrapper)
    return click.option(
        "--curve-server-key", type=_KEY_FILE, metavar="FILE",
        envvar="TITANIC_CURVE_SERVER_KEY", default=None,
        help="Speak CURVE to the broker whose public key is in this .key file "
        "[env TITANIC_CURVE_SERVER_KEY].",
    )(wrapper)


@dataclass(frozen=True)
class CurveServerOptions:
    """The broker's CURVE options as given; `server()` checks and loads them."""

    secret: Path | None = None
    allow: Path | None = None
    allow_workers: Path | None = None
    admin: Path | None = None

    def server(self, separate_workers: bool) -> CurveServer | None:
        """The CurveServer, or None when CURVE is off; secret and folder both or neither."""
        if self.secret is None and self.allow is None:
            for folder, name in ((self.allow_workers, "--curve-allow-workers"),
                                 (self.admin, "--curve-admin")):
                if folder is not None:
                    raise UsageProblem(f"{name} needs --curve-secret and --curve-allow")
            return None
        if self.secret is None or self.allow is None:
            given, missing = (("--curve-secret", "--curve-allow") if self.allow is None
                              else ("--curve-allow", "--curve-secret"))
            raise UsageProblem(f"{given} needs {missing} too (TITANIC_CURVE_SECRET and "
                               "TITANIC_CURVE_ALLOW): CURVE takes both or neither")
        if self.allow_workers is not None and not separate_workers:
            raise UsageProblem("--curve-allow-workers needs --worker-bind: it admits workers on "
                               "their own endpoint")
        from titanic.security.keys import load_keypair
        from titanic.security.zap import CurveServer

        return CurveServer(load_keypair(self.secret), self.allow,
                           workers_allowed=self.allow_workers, admin=self.admin)


def curve_server_options(func: Callable[..., R]) -> Callable[..., R]:
    """--curve-secret, --curve-allow, --curve-allow-workers and --curve-admin
    (TITANIC_CURVE_SECRET, TITANIC_CURVE_ALLOW, TITANIC_CURVE_ALLOW_WORKERS, TITANIC_CURVE_ADMIN),
    given as `curve`, a CurveServerOptions."""

    @functools.wraps(func)
    def wrapper(*args: Any, curve_secret: Path | None, curve_allow: Path | None,
                curve_allow_workers: Path | None, curve_admin: Path | None, **kwargs: Any) -> R:
        return func(*args, curve=CurveServerOptions(curve_secret, curve_allow,
                                                    curve_allow_workers, curve_admin), **kwargs)

    wrapper = click.option(
        "--curve-admin", type=_KEY_FOLDER, metavar="DIR",
        envvar="TITANIC_CURVE_ADMIN", default=None,
        help="Trusted keys (dispatchers, operators), admitted on every endpoint: a client with "
        "one may fetch and close every stored request, a worker with one may learn who sends "
        "each request (the dispatcher needs this for ownership) [env TITANIC_CURVE_ADMIN].",
    )(wrapper)
    wrapper = click.option(
        "--curve-allow-workers", type=_KEY_FOLDER, metavar="DIR",
        envvar="TITANIC_CURVE_ALLOW_WORKERS", default=None,
        help="With --worker-bind: admit workers whose public key is in a .key file here "
        "(default: --curve-allow) [env TITANIC_CURVE_ALLOW_WORKERS].",
    )(wrapper)
    wrapper = click.option(
        "--curve-allow", type=_KEY_FOLDER, metavar="DIR",
        envvar="TITANIC_CURVE_ALLOW", default=None,
        help="Admit only peers whose public key is in a .key file in this folder; read again "
        "when it changes [env TITANIC_CURVE_ALLOW].",
    )(wrapper)
    return click.option(
        "--curve-secret", type=_KEY_FILE, metavar="FILE",
        envvar="TITANIC_CURVE_SECRET", default=None,
        help="Require CURVE, with the broker's key pair from this .key_secret file "
        "[env TITANIC_CURVE_SECRET].",
    )(wrapper)


@contextmanager
def client_session(curve: CurveOptions) -> Iterator[tuple[zmq.Context[zmq.Socket[bytes]],
                                                          SocketHook | None]]:
    """A context and socket hook (CURVE, or None) for one command's clients. A refused
    handshake is told by the clients themselves (HandshakeRefusedError, exit 9)."""
    import zmq

    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield context, curve.hook()
    finally:
        context.term()
