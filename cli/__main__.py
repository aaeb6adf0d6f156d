"""`python -m titanic_cli` runs the titanic command."""

from titanic_cli.main import main

main()
