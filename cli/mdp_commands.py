"""Commands for the Majordomo layer: broker, worker, call, mmi."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
