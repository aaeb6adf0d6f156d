"""`python -m titanic` runs the titanic command (the CLI package installed beside titanic)."""

from __future__ import annotations

import importlib
import sys


def main() -> None:
    """Hand over to titanic_cli; looked up by name, as the library itself never uses the CLI."""
    try:
        cli = importlib.import_module("titanic_cli.main")
    except ImportError as exc:
        sys.exit(f"titanic: the command-line package is not installed: {exc}")
    cli.main()


if __name__ == "__main__":
    main()
