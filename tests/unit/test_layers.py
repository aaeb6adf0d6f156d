"""The packages of titanic import only what docs/architecture.md's drawing lets them reach: lower
layers never import higher ones, and nothing of titanic imports the CLI."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "titanic"

#: Modules directly in titanic/ that every layer may use (`__version__` is the root's).
FOUNDATION = frozenset({"errors", "settings", "logs", "_zmq", "_lazy", "__version__"})
#: The arrows of docs/architecture.md's drawing: what each part of titanic imports directly.
ARROWS: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "_zmq": frozenset(),
    "_lazy": frozenset(),
    "__version__": frozenset(),
    "settings": frozenset({"errors"}),
    "logs": frozenset({"errors", "settings"}),
    "protocol": frozenset({"errors"}),
    "security": FOUNDATION,
    "store": frozenset({"security", "protocol"}),
    "broker": frozenset({"security", "protocol"}),
    "client": frozenset({"security", "protocol"}),
    "tasks": frozenset({"client"}),
    "worker": frozenset({"tasks"}),
    "dispatch": frozenset({"store", "broker", "worker", "client"}),
    "testing": frozenset({"dispatch"}),
    "ops": frozenset({"dispatch"}),
    "bench": frozenset({"dispatch", "testing"}),
    "__init__": frozenset({"protocol", "worker"}),
    "__main__": frozenset(),
}


def _reached(part: str) -> frozenset[str]:
    """What a part may import: everything its arrows reach."""
    reached: set[str] = set()
    todo = [part]
    while todo:
        for target in ARROWS[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    return frozenset(reached)


ALLOWED = {part: _reached(part) for part in ARROWS}


def _part(module: str) -> str:
    """The part of titanic a module belongs to: its package, or the top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("titanic", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imported(path: Path) -> Iterator[str]:
    """Every module an import statement of the file names, at any depth (lazy imports too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "titanic":  # from titanic import __version__ / a module
                yield from (f"titanic.{alias.name}" for alias in node.names)
            else:
                yield node.module


def test_every_part_of_titanic_has_its_rule() -> None:
    parts = {_part(module) for module, _ in _modules()}
    assert parts == set(ARROWS) - {"__version__"}, "give each new package its arrows"


def test_every_module_imports_only_what_its_layer_allows() -> None:
    broken = []
    for module, path in _modules():
        part = _part(module)
        for name in _imported(path):
            if name.startswith("titanic_cli"):
                broken.append(f"{module} imports the CLI ({name})")
            elif name.startswith("titanic.") and _part(name) not in {part, *ALLOWED[part]}:
                broken.append(f"{module} imports {name}: {part} may import "
                              f"{', '.join(sorted(ALLOWED[part]))}")
    assert broken == []
