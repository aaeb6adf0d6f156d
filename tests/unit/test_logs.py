"""Log lines as JSON: the event, the component, and the request's UUID and service."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from titanic.broker.stats import BrokerStats
from titanic.dispatch.settings import DispatcherStats
from titanic.logs import JsonFormatter, about, level_number, make_formatter, quoted_name
from titanic.store.types import StoreIdentity
from titanic_cli.options import LogOptions


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("dispatcher"))
    logger = logging.getLogger("titanic.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_a_json_line_carries_event_component_request_and_service(
        captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    uuid = "0190c6f2a1b47c3e9d2f00112233aabb"
    logger.info("request %s will be retried: %s", uuid, "no reply",
                extra=about(uuid, b"resize"))
    line = json.loads(stream.getvalue())
    assert line["event"] == f"request {uuid} will be retried: no reply"
    assert line["request"] == uuid
    assert line["service"] == "resize"
    assert line["component"] == "dispatcher"
    assert line["level"] == "info"
    assert line["logger"] == "titanic.test_logs"


def test_a_line_about_nothing_in_particular_has_no_request_fields(
        captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("store error")
    line = json.loads(stream.getvalue())
    assert "request" not in line and "service" not in line
    assert "ValueError: boom" in line["exception"]


def test_unknown_format_and_level_are_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        make_formatter("xml", "broker")
    with pytest.raises(ValueError, match="log level"):
        level_number("loud")
    assert level_number("WARNING") == logging.WARNING


def test_log_options_set_the_root_level_and_format() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    old_level = root.level
    root.addHandler(handler)
    try:
        LogOptions("json", "error").apply("broker", verbose=2)
        assert root.level == logging.ERROR  # --log-level wins over -v
        assert isinstance(handler.formatter, JsonFormatter)
        LogOptions("text", None).apply("broker", verbose=1)
        assert root.level == logging.DEBUG
        assert not isinstance(handler.formatter, JsonFormatter)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert LogOptions("json", "debug").argv() == ["--log-format", "json", "--log-level",
                                                   "debug"]


def test_stats_and_store_identity_read_as_words_in_log_lines() -> None:
    assert str(DispatcherStats(dispatched=12, completed=12, retried=1)) == \
        "dispatched 12, completed 12, retried 1"
    assert str(BrokerStats(messages=40, malformed=2, workers_gone=1)) == \
        "messages 40, malformed 2, workers gone 1"
    assert str(BrokerStats()) == "nothing counted"
    assert str(StoreIdentity("668ac55a" * 4, "/tmp/t.db")) == f"{'668ac55a' * 4} at /tmp/t.db"


@pytest.mark.parametrize(("name", "shown"), [
    (b"titanic.request", "'titanic.request'"),
    ("echo", "'echo'"),
    (b"\xffname", "'\\xffname'"),
    (b"two\nlines", "'two\\nlines'"),  # a peer's name cannot start a log line of its own
    (b"x" * 50, "'" + "x" * 37 + "...'"),
])
def test_names_in_log_lines_are_quoted_text(name: str | bytes, shown: str) -> None:
    assert quoted_name(name) == shown


def test_every_logger_name_is_one_the_operations_guide_lists() -> None:
    root = Path(__file__).resolve().parents[2]
    listed = set(re.findall(r"^\| `(titanic[\w.]*)`(?:, `(titanic[\w.]*)`)?",
                            (root / "docs" / "operations.md").read_text(), re.M))
    documented = {name for row in listed for name in row if name}
    used = {name for folder in ("titanic", "cli") for path in (root / folder).rglob("*.py")
            for name in re.findall(r"getLogger\(\"(titanic[^\"]*)\"\)", path.read_text())}
    assert "titanic.broker" in used and "titanic.broker" in documented
    assert used - documented == set(), "name these loggers in docs/operations.md, Logs"
    assert not any("getLogger(__name__)" in path.read_text()
                   for folder in ("titanic", "cli") for path in (root / folder).rglob("*.py"))
