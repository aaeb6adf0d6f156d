"""What a command says when given something it cannot use: one line of text on stderr, never a
traceback or a Python repr (b'...'), and a documented exit code."""

from __future__ import annotations

import re
import subprocess

import pytest
from titanic_support import CLI, free_endpoint

UUID = "0190c6f2a1b47c3e9d2f00112233aabb"


def titanic(command: str, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    """A titanic command with raw bytes allowed among its arguments, against no broker (its
    own options, given after these, win)."""
    return subprocess.run([*CLI, command, "--broker", free_endpoint(), "--timeout", "0.5", *args],
                          capture_output=True, timeout=60, check=False)


def one_line(done: subprocess.CompletedProcess[bytes]) -> str:
    text = done.stderr.decode()
    assert text.count("\n") == 1 and text.startswith("titanic: "), text
    assert "Traceback" not in text and not re.search(r"(?<![\w\\])b'", text), text
    return text.rstrip("\n")


@pytest.mark.parametrize(("args", "line"), [
    (["submit", b"\xff", "x"], "titanic: SERVICE '\\xff' is not UTF-8 text: it is a name, in "
                               "text"),
    (["submit", "echo", b"a\xffb"], "titanic: PAYLOAD 'a\\xffb' is not UTF-8 text: give bytes "
                                    "that are not text in a file (@FILE) or on stdin (-)"),
    (["submit", "echo", "x", "--frame", b"\xfe"], "titanic: --frame '\\xfe' is not UTF-8 text: "
                                                  "give bytes that are not text in a file "
                                                  "(@FILE) or on stdin (-)"),
    (["submit", "echo", "x", "--key", b"k\xff"], "titanic: --key 'k\\xff' is not UTF-8 text: "
                                                 "it is a name, in text"),
    (["call", b"\xff"], "titanic: SERVICE '\\xff' is not UTF-8 text: it is a name, in text"),
    (["call", "echo", b"\xff"], "titanic: FRAME '\\xff' is not UTF-8 text: give bytes that are "
                                "not text in a file (@FILE) or on stdin (-)"),
    (["mmi", b"\xff"], "titanic: SERVICE '\\xff' is not UTF-8 text: it is a name, in text"),
    (["fetch", b"\xff"], "titanic: UUID '\\xff' is not a request UUID: give 32 hex digits or "
                         "the 8-4-4-4-12 form"),
    (["close", b"\xff"], "titanic: UUID '\\xff' is not a request UUID: give 32 hex digits or "
                         "the 8-4-4-4-12 form"),
])
def test_arguments_that_are_not_utf8_are_exit_2_in_one_line(args: list[str | bytes],
                                                            line: str) -> None:
    done = titanic(*args)
    assert done.returncode == 2
    assert one_line(done) == line


def test_a_broker_endpoint_that_is_not_utf8_is_one_line() -> None:
    done = subprocess.run([*CLI, "submit", "echo", "x", "--broker", b"tcp://\xff:1"],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 2
    assert one_line(done) == ("titanic: 'tcp://\\xff:1' is not an endpoint to connect to: it "
                              "is not UTF-8 text")


@pytest.mark.parametrize(("args", "line"), [
    (["fetch", "xyz"], "titanic: UUID 'xyz' is not a request UUID: give 32 hex digits or the "
                       "8-4-4-4-12 form"),
    (["fetch"], "titanic: missing argument 'UUID'; see 'titanic fetch --help'"),
    (["submit", "echo", "x", "--timeout", "soon"],
     "titanic: invalid value for '--timeout': 'soon' is not a valid float range; see "
     "'titanic submit --help'"),
    (["submit", "echo", "x", "--key", ""], "titanic: --key '' must be 1 to 255 characters"),
    (["purge", "--state", "done", "--older-than", "later"],
     "titanic: invalid value for '--older-than': not a duration: 'later' (e.g. 90s, 15m, 12h, "
     "1d, 2w); see 'titanic purge --help'"),
    (["call", "echo", "@/nonexistent/photo.jpg"],
     "titanic: cannot read '/nonexistent/photo.jpg' (FRAME): No such file or directory"),
])
def test_usage_errors_are_one_line_of_text(args: list[str], line: str) -> None:
    done = titanic(*args)
    assert done.returncode == 2
    assert one_line(done) == line


def test_an_unknown_command_names_the_help() -> None:
    done = subprocess.run([*CLI, "sumbit"], capture_output=True, timeout=60, check=False)
    assert done.returncode == 2
    assert one_line(done) == "titanic: no such command 'sumbit'; see 'titanic --help'"


@pytest.mark.parametrize("group", [[], ["db"], ["worker"]])
def test_a_group_without_its_command_shows_its_help(group: list[str]) -> None:
    done = subprocess.run([*CLI, *group], capture_output=True, timeout=60, check=False)
    shown = (done.stdout + done.stderr).decode()
    assert shown.startswith(f"Usage: {' '.join(['titanic', *group])} [OPTIONS] COMMAND"), shown
    assert "Commands:" in shown and "Traceback" not in shown
