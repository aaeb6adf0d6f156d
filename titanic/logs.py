"""Log lines as text for people or as JSON objects for log collectors, one line per record.

titanic's modules only log; the command line chooses the format (`--log-format text|json`).
A record about one request carries its UUID and service as attributes (`extra=about(...)`), so
a JSON line can be searched by them instead of by parsing the text.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from typing import Any

from titanic.settings import quoted

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Record attributes copied into a JSON line when a log call set them.
CONTEXT_FIELDS = ("request", "service")


def quoted_name(name: str | bytes, limit: int = 40) -> str:
    """A service (or another peer-given) name for a log line: its text in quotes, cut at `limit`
    characters, bytes that are not UTF-8 and characters that are not printable escaped (a name
    cannot start a line of its own); never a Python repr like b'echo'."""
    return quoted(name, limit)


def counters_text(stats: object) -> str:
    """A stats dataclass's counters for a log line, in words: `dispatched 12, completed 12`.
    Counters at zero are left out ("nothing counted" when all are)."""
    assert is_dataclass(stats)
    counted = [(field.name, getattr(stats, field.name)) for field in fields(stats)]
    shown = [f"{name.replace('_', ' ')} {value}" for name, value in counted
             if isinstance(value, int) and value]
    return ", ".join(shown) if shown else "nothing counted"


def about(request: str | None = None, service: str | bytes | None = None) -> dict[str, Any]:
    """The `extra=` of a log call about a request: its UUID and its service, where known."""
    fields: dict[str, Any] = {}
    if request is not None:
        fields["request"] = request
    if service is not None:
        fields["service"] = (service.decode("utf-8", "replace") if isinstance(service, bytes)
                             else service)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, component, logger, event, and the request's
    UUID and service when the record is about one."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def make_formatter(kind: str, component: str) -> logging.Formatter:
    """The formatter for `--log-format` KIND ("text" or "json")."""
    if kind == "json":
        return JsonFormatter(component)
    if kind == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {kind!r}: choose one of {', '.join(FORMATS)}")


def level_number(name: str) -> int:
    """The logging level for `--log-level` NAME (debug, info, warning, error)."""
    if name.lower() not in LEVELS:
        raise ValueError(f"unknown log level {name!r}: choose one of {', '.join(LEVELS)}")
    return int(getattr(logging, name.upper()))
