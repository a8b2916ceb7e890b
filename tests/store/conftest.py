"""Fixtures of the store tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kakumei.store.db import Database
from tests.fixtures.db import migrated


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The test's database, migrated."""
    with migrated(database_url) as database:
        yield database
