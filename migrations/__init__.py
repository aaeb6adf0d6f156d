"""Alembic migrations of the titanic schema, shipped inside the wheel as titanic.migrations."""
