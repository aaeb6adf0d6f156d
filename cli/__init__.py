"""The `titanic` command line: thin click commands over the titanic package."""
