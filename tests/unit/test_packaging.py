"""The wheel carries every package of the source tree.

setuptools is given an explicit package list, so a new sub-package that is not added to it
installs without its modules and fails only where the wheel is used: this test compares the list
with the folders that hold an ``__init__.py``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _packages_in_tree(folder: str, name: str) -> set[str]:
    base = ROOT / folder
    found = set()
    for init in base.rglob("__init__.py"):
        parts = init.parent.relative_to(base).parts
        if "__pycache__" in parts:
            continue
        found.add(".".join((name, *parts)))
    return found


def test_every_package_of_the_tree_is_in_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    in_tree = (
        _packages_in_tree("titanic", "titanic")
        | _packages_in_tree("cli", "titanic_cli")
        | _packages_in_tree("migrations", "titanic.migrations")
    )
    assert in_tree - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - in_tree == set(), "these listed packages have no folder"
