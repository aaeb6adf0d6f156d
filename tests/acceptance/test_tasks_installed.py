"""Tasks from outside: the project built as a wheel and installed in a fresh virtual environment
in a temporary folder, `titanic up` on a free port with its SQLite file there, `titanic worker
run mytasks` serving a module the user wrote, and the user's own script and the CLI calling
the tasks, all with a fresh HOME."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from titanic_support import Processes, free_endpoint, wait_until

from titanic.client import Client
from titanic.protocol.mmi import FOUND
from titanic.protocol.mmi import SERVICE as MMI_SERVICE

ROOT = Path(__file__).resolve().parents[2]

MYTASKS = '''
import titanic


@titanic.task
def resize(image: bytes, width: int, *, fmt: str = "png") -> dict:
    return {"bytes": len(image), "width": width, "fmt": fmt, "first": image[:1]}


@titanic.task(name="shop.fail")
def fail(reason: str) -> None:
    raise ValueError(reason)
'''

CLIENT = '''
import json
import titanic
import mytasks

titanic.configure(timeout=5, retries=5)  # the broker from TITANIC_BROKER
handle = mytasks.resize.submit(b"\\x89PNG", 640, fmt="webp")
result = handle.result(timeout=60)
print(json.dumps({"id": handle.id, "first": result.pop("first").hex(), **result}))
try:
    mytasks.fail.submit("no stock").result(timeout=60)
except titanic.TaskFailed as exc:
    print(json.dumps({"type": exc.type_name, "message": exc.message, "attempts": exc.attempts,
                      "last_line": exc.traceback.splitlines()[-1], "str": str(exc),
                      "raised_at": "raise ValueError(reason)" in exc.traceback}))
try:
    mytasks.resize.submit({1, 2}, 3)
except TypeError as exc:
    print(json.dumps({"refused": str(exc)}))
'''

LATER = '''
import sys
import titanic

value = titanic.Handle(sys.argv[1]).result(timeout=30)
print(value["width"], value["first"].hex())
titanic.Handle(sys.argv[1]).close()
'''


def _run(argv: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, check=False)
    assert done.returncode == 0, f"{argv[:4]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh virtual environment with the project's wheel installed."""
    folder = tmp_path_factory.mktemp("installed")
    source = folder / "source"  # a copy: the build's own folders stay out of the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".*", "build", "dist", "*.egg-info", "__pycache__", "venv", "tests"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", folder / "dist",
          source])
    wheel = next((folder / "dist").glob("titanic_zmq-*.whl"))
    _run([sys.executable, "-m", "venv", folder / "venv"])
    _run([folder / "venv" / "bin" / "python", "-m", "pip", "install", "-q", wheel])
    return folder / "venv" / "bin"


@pytest.fixture
def site(tmp_path: Path, venv_bin: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """The user's folder (mytasks.py and the scripts) and the environment of every command:
    a fresh HOME there, the broker on a free port."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "mytasks.py").write_text(textwrap.dedent(MYTASKS))
    (tmp_path / "client.py").write_text(textwrap.dedent(CLIENT))
    (tmp_path / "later.py").write_text(textwrap.dedent(LATER))
    env = {"PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": str(home),
           "XDG_DATA_HOME": str(home / ".local" / "share"), "TITANIC_BROKER": free_endpoint(),
           "TITANIC_MAX_ATTEMPTS": "2", "TITANIC_BACKOFF": "0.05", "LANG": "C.UTF-8"}
    return tmp_path, env


def _served(broker: str, service: bytes) -> bool:
    with Client(broker, timeout=1.0, retries=0) as client:
        try:
            return client.request(MMI_SERVICE, service)[:1] == [FOUND]
        except Exception:  # noqa: BLE001 - not up yet: asked again
            return False


def test_an_installed_titanic_runs_a_users_tasks(procs: Processes, venv_bin: Path,
                                                 site: tuple[Path, dict[str, str]]) -> None:
    folder, env = site
    broker = env["TITANIC_BROKER"]
    titanic = str(venv_bin / "titanic")
    up = procs.start("up", [titanic, "up", "--bind", broker, "--db",
                            f"sqlite:///{folder / 'titanic.db'}"], env=env, cwd=folder)
    worker = procs.start("worker", [titanic, "worker", "run", "mytasks", "--concurrency", "2"],
                         env=env, cwd=folder)
    for service in (b"titanic.request", b"resize", b"shop.fail"):
        wait_until(lambda s=service: _served(broker, s), timeout=60, interval=0.2,  # type: ignore[misc]
                   message=f"{service.decode()} served:\n{procs.log('up')}{procs.log('worker')}")

    lines = _run([venv_bin / "python", "client.py"], cwd=folder, env=env, timeout=180)
    done, failed, refused = (json.loads(line) for line in lines.stdout.splitlines())
    assert {key: done[key] for key in ("bytes", "width", "fmt", "first")} == {
        "bytes": 4, "width": 640, "fmt": "webp", "first": "89"}
    assert failed == {"type": "ValueError", "message": "no stock", "attempts": 2,
                      "last_line": "ValueError: no stock", "raised_at": True,
                      "str": failed["str"]}
    assert failed["str"].endswith(" failed: ValueError: no stock (after 2 attempts)")
    assert refused == {"refused": "resize: argument 0 is a set, which msgpack cannot carry"}

    later = _run([venv_bin / "python", "later.py", done["id"]], cwd=folder, env=env)
    assert later.stdout.split() == ["640", "89"]

    submitted = _run([titanic, "submit", "resize", "--task-args",
                      '{"args": [{"$bytes": "iVBO"}, 10], "kwargs": {"fmt": "gif"}}'],
                     env=env)
    request_id = submitted.stdout.strip()
    fetched = _run([titanic, "fetch", "--wait", "--timeout", "60", "--json", request_id],
                   env=env)
    assert json.loads(fetched.stdout) == {"uuid": request_id, "state": "done", "result": {
        "bytes": 3, "width": 10, "fmt": "gif", "first": {"$bytes": "iQ=="}}}
    failing = _run([titanic, "submit", "shop.fail", "--task-args", '{"args": ["gone"]}'],
                   env=env).stdout.strip()
    shown = subprocess.run([titanic, "fetch", "--wait", "--timeout", "60", failing],
                           capture_output=True, text=True, timeout=120, env=env, check=False)
    assert shown.returncode == 5
    assert shown.stderr == f"titanic: request {failing} is failed: ValueError: gone " \
                           "(after 2 attempts)\n"

    assert Processes.terminate(worker) == 0
    assert Processes.terminate(up, timeout=30) == 0
    assert (folder / "titanic.db").exists()
    assert not (folder / "home" / ".local" / "share" / "titanic").exists()  # --db was used


def test_the_wheel_is_titanic_zmq_and_postgresql_asks_for_its_extra(
        venv_bin: Path, site: tuple[Path, dict[str, str]]) -> None:
    _, env = site
    shown = _run([venv_bin / "python", "-m", "pip", "show", "titanic-zmq"], env=env)
    assert "Name: titanic-zmq" in shown.stdout
    driver = subprocess.run([venv_bin / "python", "-c", "import psycopg"], capture_output=True,
                            timeout=60, env=env, check=False)
    assert driver.returncode != 0  # the wheel alone brings no PostgreSQL driver
    titanic = str(venv_bin / "titanic")
    url = "postgresql://titanic@127.0.0.1:5432/titanic"
    hint = ("titanic: PostgreSQL needs the psycopg driver, which is not installed: "
            "pip install 'titanic-zmq[postgres]'\n")
    for args in (["status", "--db", url, "0" * 32], ["db", "upgrade", "--db", url],
                 ["broker", "--titanic", "--db", url, "--bind", free_endpoint()]):
        done = subprocess.run([titanic, *args], capture_output=True, text=True, timeout=60,
                              env=env, check=False)
        assert (done.returncode, done.stderr) == (7, hint), args
