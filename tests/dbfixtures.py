"""Database fixtures for store, server and worker tests (issue 4).

Every such test runs twice: on a SQLite file and on PostgreSQL at 127.0.0.1:5432 (trust
auth). Each session makes its own PostgreSQL database and each test its own schema in it,
so parallel runs never see each other; both are dropped afterwards. PostgreSQL being
unreachable is an error, never a skip: CI must exercise both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from kakumei.store.db import Database
from kakumei.store.images import ImageStore
from kakumei.store.jobs import JobStore
from kakumei.store.migrate import migrate
from kakumei.store.users import UserStore

# Maintenance database to create the session database from.
POSTGRES_ADMIN_URLS = (
    os.environ.get("KAKUMEI_TEST_POSTGRES") or "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)

BACKENDS = ("sqlite", "postgresql")


def _admin_connect() -> psycopg.Connection:
    errors = []
    for url in POSTGRES_ADMIN_URLS:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            errors.append(f"{url}: {exc}")
    raise RuntimeError("PostgreSQL is required by the store tests: " + "; ".join(errors))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a fresh database for this test session."""
    name = f"kakumei_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _admin_connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        # Tests do not outlive the PostgreSQL server; skipping the commit fsync keeps them quick.
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        info = admin.info
        url = f"postgresql://{info.user}@{info.host}:{info.port}/{name}"
    yield url
    with _admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kakumei.db'}"
        return
    base = request.getfixturevalue("postgres_database")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{base}?options=-csearch_path%3D{schema}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


class FakeClock:
    """Time that moves only when a test says so: lease expiry without sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Stores:
    db: Database
    users: UserStore
    jobs: JobStore
    images: ImageStore
    clock: FakeClock


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Iterator[Stores]:
    db = Database(database_url)
    migrate(db)
    clock = FakeClock()
    images = ImageStore(db, tmp_path / "images")
    jobs = JobStore(db, images, lease_seconds=30.0, max_attempts=3, clock=clock)
    yield Stores(db, UserStore(db), jobs, images, clock)
    db.close()
