"""The request store: the only package that imports the SQLAlchemy ORM."""
