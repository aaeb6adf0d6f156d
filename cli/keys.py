"""`titanic keygen`: a CURVE key pair in ZeroMQ's certificate format."""

from __future__ import annotations

from pathlib import Path

import click

from titanic.security import KEY_NAME, load_public_key, write_keypair
from titanic_cli.options import UsageProblem, handle_errors, shown


@click.command()
@click.argument("name")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="Folder to write the two files in (made, 0700, if new).")
@handle_errors
def keygen(name: str, folder: Path) -> None:
    """Write a CURVE key pair: NAME.key (public) and NAME.key_secret (owner-only).

    Give NAME.key to whoever must know this peer (the broker's allowed folder, or every client
    for the broker's own key); NAME.key_secret never leaves this host. Never overwrites a key
    (exit 8).

    \b
    Example:
      titanic keygen broker --dir /etc/titanic
      titanic keygen alice && cp alice.key /etc/titanic/allowed/
    """
    if not KEY_NAME.match(name):
        raise UsageProblem(f"bad key name {shown(name)}: use letters, digits, '_', '-' and '.', "
                           "not starting with '.' or '-'")
    public_file, secret_file = write_keypair(folder, name)
    click.echo(f"public key:  {public_file}")
    click.echo(f"secret key:  {secret_file} (readable by its owner only)")
    click.echo(f"public key is {load_public_key(public_file).decode()}")
