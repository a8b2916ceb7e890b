"""Fixtures of the store tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kakumei.store.db import Database
from kakumei.store.migrate import migrate


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The test's database, migrated."""
    database = Database(database_url)
    migrate(database)
    yield database
    database.close()
