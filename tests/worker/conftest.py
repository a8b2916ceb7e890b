"""Fixtures: databases (both backends) from tests/dbfixtures.py."""

from dbfixtures import FakeClock, Stores, database_url, postgres_database, stores  # noqa: F401
