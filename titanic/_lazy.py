"""Public names of a package imported from their modules on first use.

A package's face (`titanic`, `titanic.client`, `titanic.security`, ...) names what users import
from it without importing it: `import titanic` loads neither ZeroMQ nor msgpack, and a module
of `titanic.client` that needs no socket does not load the blocking client beside it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module


def lazy_names(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: each of `names` (name -> the module defining it)
    is imported when first asked for, then kept in the package like any other attribute."""

    def load(name: str) -> object:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return load
