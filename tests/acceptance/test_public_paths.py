"""The import paths and module paths users are given keep working: `from titanic import ...`,
the packages' faces, `python -m titanic`, `python -m titanic_cli`, `python -m titanic.bench.*`,
and every `import` line and `python -m` command the README and docs/ show."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import titanic

ROOT = Path(__file__).resolve().parents[2]

#: Paths the README and docs/ name in prose (`titanic.worker.Worker`), each module with names.
DOCUMENTED = {
    "titanic.testing": ["MemoryStore", "MemoryTransport", "answer_requests"],
    "titanic.store": ["open_store", "SqlStore", "Store"],
    "titanic.errors": ["TitanicError", "StoreError", "BrokerRefusedError",
                       "FreelanceTimeoutError", "ServiceRefusedError"],
    "titanic.worker": ["Worker", "echo_handler", "FreelanceServer"],
    "titanic.client": ["Client", "PipelinedClient", "Completion", "FreelanceClient",
                       "AsyncFreelanceClient"],
    "titanic.protocol.flp": ["build_request", "parse_reply"],
    "titanic.broker": ["Broker"],
    "titanic.security": ["load_client_hook", "write_keypair", "CurveServer"],
    "titanic.protocol.tsp": ["build_request", "split_request"],
    "titanic.protocol.failure": ["split_last_error"],
    "titanic.migrations": [],
}

_IMPORT = re.compile(r"^\s*(?:from\s+(titanic[\w.]*)\s+import\s+([\w, ()]+)"
                     r"|import\s+(titanic[\w.]*))")
_RUN_MODULE = re.compile(r"python3? -m (titanic(?:\.\w+)*)")


def test_every_public_name_of_titanic_imports() -> None:
    for name in titanic.__all__:
        assert getattr(titanic, name) is not None, name


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_each_documented_path_imports(module: str) -> None:
    imported = importlib.import_module(module)
    for name in DOCUMENTED[module]:
        assert getattr(imported, name) is not None, f"{module}.{name}"


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_import_the_docs_show_resolves() -> None:
    seen = 0
    for document in _documents():
        for line in document.read_text().splitlines():
            found = _IMPORT.match(line)
            if found is None:
                continue
            module = found.group(1) or found.group(3)
            imported = importlib.import_module(module)
            names = (found.group(2) or "").replace("(", "").replace(")", "")
            for name in filter(None, (part.split(" as ")[0].strip()
                                      for part in names.split(","))):
                assert hasattr(imported, name) or importlib.util.find_spec(
                    f"{module}.{name}") is not None, f"{document.name}: {line.strip()}"
            seen += 1
    assert seen >= 5  # the docs do show imports: the pattern still finds them


def test_every_module_the_docs_run_exists() -> None:
    modules = {found for document in _documents()
               for found in _RUN_MODULE.findall(document.read_text())}
    assert "titanic.bench.store" in modules  # the pattern still finds them
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"python -m {module}"


def _scripts() -> list[str]:
    """The modules of titanic.bench that run as scripts."""
    folder = ROOT / "titanic" / "bench"
    return sorted(f"titanic.bench.{path.stem}" for path in folder.glob("*.py")
                  if 'if __name__ == "__main__":' in path.read_text())


@pytest.mark.parametrize("module", ["titanic", "titanic_cli"])
def test_python_dash_m_runs_the_cli(module: str) -> None:
    done = subprocess.run([sys.executable, "-P", "-m", module, "--version"],
                          capture_output=True, timeout=60, cwd="/", check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"titanic, version ")


@pytest.mark.parametrize("module", _scripts())
def test_each_bench_module_runs_as_a_script(module: str) -> None:
    done = subprocess.run([sys.executable, "-P", "-m", module, "--help"],
                          capture_output=True, timeout=60, cwd="/", check=False)
    if module == "titanic.bench.device":  # a helper process: `proxy ...` or `echo ...`
        assert done.returncode == 2 and b"proxy" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(b"usage: "), done.stdout[:200]
