"""Every command block of README.md and docs/quickstart.md, run as a user would, in a fresh
folder with a fresh HOME, against the installed package: the documents cannot drift from the
code.

How a document is read:
- A ```sh block of `$ ` lines is a shell session (one bash per document, so `id=$(...)` carries
  over); the lines after a command, up to the next `$ `, are its expected output, where a UUID
  matches any UUID and `...` matches anything. A block without `$ ` is the set-up commands: the
  venv and `pip install` steps are checked for and skipped (the package is installed already),
  what follows them run as commands.
- A command marked `# runs until Ctrl-C` is started in the background (a new `titanic up` stops
  the one before), and the next command waits until the broker has its workers.
- A ```python block that the text before it names a file for ("save this as `x.py`", "in
  `shop/tasks.py`", or a first line `# shop/frames.py: ...`) is written there; another is run,
  and each `print(...)  # expected` line's expected text is looked for in its output.
- The broker's endpoint is a free port (TITANIC_BIND and TITANIC_BROKER), a PostgreSQL URL
  in a document is replaced by a database of the test's own, and the quickstart's freelance
  endpoints by free ports (its freelance servers also register with the broker, through
  TITANIC_BROKER, which is how the test sees them serving).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from titanic_support import free_endpoint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
UUID = re.compile(r"[0-9a-f]{32}")
BACKGROUND = "# runs until Ctrl-C"
COMMAND_TIMEOUT_S = 120.0


@dataclass
class Block:
    language: str
    lines: list[str]
    before: str  # the text between the previous block and this one


def blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of a markdown file, in order, with the text before each."""
    text: list[str] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```") and line[3:].strip():
            end = lines.index("```", index + 1)
            yield Block(line[3:].strip(), lines[index + 1:end], "\n".join(text))
            text = []
            index = end + 1
            continue
        text.append(line)
        index += 1


def matches(expected: list[str], output: str) -> bool:
    """Whether output lines are the expected ones (UUIDs and `...` matching anything)."""
    got = [line for line in output.splitlines() if line.strip()]
    want = [line for line in expected if line.strip()]
    if len(got) != len(want):
        return False
    for wanted, line in zip(want, got, strict=True):
        pattern = re.escape(UUID.sub("UUIDXX", wanted)).replace(re.escape("..."), ".*")
        pattern = pattern.replace("UUIDXX", "[0-9a-f]{32}")
        if not re.fullmatch(pattern, line.rstrip()):
            return False
    return True


class Session:
    """A user's terminal and the background processes they started."""

    def __init__(self, folder: Path, env: dict[str, str], replacements: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.replacements = replacements
        self.background: list[tuple[str, int]] = []  # (kind, pid, also its process group)
        self.shell = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=folder, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)

    def _command(self, text: str) -> str:
        text = text.replace(".venv/bin/", "")
        for old, new in self.replacements.items():
            text = text.replace(old, new)
        return text

    def run(self, text: str) -> tuple[int, str]:
        """Run a command in the shell: its exit status and output."""
        command = self._command(text)
        if BACKGROUND in command:
            self.start(command.replace(BACKGROUND, ""))
            return 0, ""
        marker = "__titanic_docs_done__"
        assert self.shell.stdin is not None and self.shell.stdout is not None
        self.shell.stdin.write(f"{command}\necho {marker}$?\n".encode())
        self.shell.stdin.flush()
        output = b""
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while marker.encode() not in output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.shell.stdout], [], [], remaining)[0]:
                raise AssertionError(f"{command!r} did not finish in {COMMAND_TIMEOUT_S:g} s")
            chunk = os.read(self.shell.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the shell ended during {command!r}: {output!r}")
            output += chunk
        text_out, _, status = output.decode(errors="replace").rpartition(marker)
        return int(status.strip() or "0"), text_out

    def start(self, command: str) -> None:
        """Start a command that runs until Ctrl-C from the shell (so that it sees what the
        session exported), in a session of its own, and wait until it serves."""
        up = command.split()[:2] == ["titanic", "up"]
        if up:
            for pid in [pid for name, pid in self.background if name == "up"]:
                self._stop(pid)
                self.background.remove(("up", pid))
        workers = self.workers()
        status, output = self.run(f"setsid bash -c {shlex.quote('exec ' + command)} "
                                  f">/dev/null 2>&1 & echo $!")
        assert status == 0, output
        pid = int(output.split()[-1])
        self.background.append(("up" if up else "other", pid))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert _alive(pid), f"{command!r} ended"
            if up:
                ready = self.serves("titanic.request") and ("--demo" not in command
                                                            or self.serves("echo"))
            else:
                ready = self.workers() > workers
            if ready:
                time.sleep(0.3)  # a worker registers its services one connection at a time
                return
            time.sleep(0.1)
        raise AssertionError(f"{command!r} did not start serving in 60 s")

    def serves(self, service: str) -> bool:
        """Whether the broker answers and has `service` (8/MMI)."""
        return subprocess.run([str(BIN / "titanic"), "mmi", service, "--timeout", "0.5",
                               "--retries", "0"], capture_output=True, env=self.env,
                              cwd=self.folder, check=False).returncode == 0

    def workers(self) -> int:
        """How many workers the broker has now (0 while none answers)."""
        done = subprocess.run([str(BIN / "titanic"), "info", "--json", "--timeout", "0.5",
                               "--retries", "0"], capture_output=True, env=self.env,
                              cwd=self.folder, check=False)
        if done.returncode != 0:
            return 0
        found = re.search(rb'"workers":\s*(\d+)', done.stdout)
        return int(found[1]) if found else 0

    @staticmethod
    def _stop(pid: int) -> None:
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):  # it may end before the signal
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def close(self) -> None:
        for _, pid in reversed(self.background):
            self._stop(pid)
        self.shell.kill()
        self.shell.wait()


def _alive(pid: int) -> bool:
    """Whether a process of the session's is still running (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before or while it was read
        return False


def _setup_commands(block: Block) -> list[str]:
    """The commands of a set-up block that follow its venv and pip steps (checked)."""
    commands: list[str] = []
    for line in block.lines:
        steps = [step.strip() for step in line.split("&&")]
        assert steps[0].startswith("python3 -m venv .venv"), line
        assert any(step.startswith((".venv/bin/pip install .", ".venv/bin/pip install '.["))
                   for step in steps), line
        rest = [step for step in steps[1:] if not step.startswith(".venv/bin/pip")]
        commands += [step for step in rest if step != ".venv/bin/pytest"]  # we are the tests
    return commands


def _file_named(block: Block) -> str | None:
    """The file a python block is to be saved as, if the text names one."""
    first = block.lines[0] if block.lines else ""
    if found := re.match(r"#\s*([\w/]+\.py):", first):
        return found[1]
    before = block.before.strip().splitlines()[-1] if block.before.strip() else ""
    found = re.search(r"(?:save this as|[Ii]n|[Pp]ut this in) `([\w/]+\.py)`", before)
    return found[1] if found else None


def _expected_prints(lines: list[str]) -> list[str]:
    return [line.split("#", 1)[1].strip() for line in lines
            if line.lstrip().startswith("print(") and "#" in line]


def run_document(path: Path, folder: Path, env: dict[str, str],
                 replacements: dict[str, str]) -> int:
    """Run every block of a document; how many commands ran."""
    session = Session(folder, env, replacements)
    ran = 0
    try:
        for block in blocks(path):
            if block.language == "sh":
                ran += _run_shell_block(session, block)
            elif block.language == "python":
                ran += _run_python_block(session, block, folder, env)
    finally:
        session.close()
    return ran


def _run_shell_block(session: Session, block: Block) -> int:
    if not any(line.startswith("$ ") for line in block.lines):
        commands = _setup_commands(block)
        for command in commands:
            background = command.replace(".venv/bin/", "").startswith("titanic up")
            status, output = session.run(command + (f"  {BACKGROUND}" if background else ""))
            assert status == 0, (command, output)
        return len(commands)
    ran = 0
    index = 0
    lines = block.lines
    while index < len(lines):
        command = lines[index][2:]
        index += 1
        expected: list[str] = []
        while index < len(lines) and not lines[index].startswith("$ "):
            expected.append(lines[index])
            index += 1
        if command.startswith(("pip install", ". .venv/bin/activate")):
            continue  # installed already; the PATH has its commands
        status, output = session.run(command)
        ran += 1
        if expected:
            assert matches(expected, output), (command, expected, output)
        elif "exit $?" not in command:
            assert status == 0, (command, output)
    return ran


def _run_python_block(session: Session, block: Block, folder: Path,
                      env: dict[str, str]) -> int:
    code = "\n".join(block.lines)
    for old, new in session.replacements.items():
        code = code.replace(old, new)
    named = _file_named(block)
    if named is not None:
        target = folder / named
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent != folder and not (target.parent / "__init__.py").exists():
            (target.parent / "__init__.py").write_text("")
        target.write_text(code + "\n")
        return 0
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env,
                          capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
    output = done.stdout.decode()
    assert done.returncode == 0, (code, output, done.stderr.decode())
    for expected in _expected_prints(block.lines):
        wanted = re.escape(expected).replace(re.escape("(...)"), ".*")
        assert re.search(wanted, output), (expected, output)
    return 1


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    endpoint = free_endpoint()
    env = {key: value for key, value in os.environ.items() if not key.startswith("TITANIC_")}
    env.update(HOME=str(home), TITANIC_BIND=endpoint, TITANIC_BROKER=endpoint,
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONDONTWRITEBYTECODE="1")
    env.pop("XDG_DATA_HOME", None)
    return env


@pytest.mark.timeout(600)
def test_every_command_of_the_readme_runs_as_written(tmp_path: Path,
                                                     user_env: dict[str, str]) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    assert run_document(ROOT / "README.md", folder, user_env, {}) >= 6


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_every_command_of_the_quickstart_runs_as_written(tmp_path: Path,
                                                         user_env: dict[str, str],
                                                         postgres_url: str) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    documented = "postgresql://postgres@127.0.0.1:5432/test"
    assert documented in (ROOT / "docs" / "quickstart.md").read_text()
    freelance = ["tcp://127.0.0.1:5601", "tcp://127.0.0.1:5602"]
    assert all(endpoint in (ROOT / "docs" / "quickstart.md").read_text()
               for endpoint in freelance)
    ran = run_document(ROOT / "docs" / "quickstart.md", folder, user_env,
                       {documented: postgres_url,
                        **{endpoint: free_endpoint() for endpoint in freelance}})
    assert ran >= 15
    assert shutil.which("titanic", path=user_env["PATH"]) is not None
