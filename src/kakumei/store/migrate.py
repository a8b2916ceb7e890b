"""Numbered SQL migrations (migrations/NNNN_name.sql), applied in order at start."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources

from kakumei.store.db import Database, Transaction, render
from kakumei.store.jobs import move_inline_inputs
from kakumei.store.notify import add_notify_trigger

# Any constant: PostgreSQL servers starting together take turns migrating.
_MIGRATION_LOCK = 7_363_001

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)
"""


# Data moves that SQL alone cannot make: version -> a step run after that version's SQL,
# in the same transaction (so a failed step leaves the migration unapplied).
AFTER_SQL: dict[int, Callable[[Database, Transaction], None]] = {5: move_inline_inputs, 12: add_notify_trigger}


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    found = []
    for entry in resources.files("kakumei.store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _statements(sql: str) -> list[str]:
    # Migrations hold no semicolons inside strings, so splitting on them is exact.
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate(db: Database, target: int | None = None) -> list[int]:
    """Apply migrations the database lacks, up to version `target` (default: all); return their
    versions. Stopping early gives the upgrade tests a database of an older release."""
    applied_now = []
    with db.transaction() as tx:
        if db.dialect == "postgresql":
            tx.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        tx.execute(_CREATE_TABLE)
        done = {r["version"] for r in tx.all("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done or (target is not None and version > target):
                continue
            for statement in _statements(sql):
                # Statements go through render() for tokens but carry no parameters.
                tx._conn.execute(render(statement, db.dialect).replace("%%", "%"))
            if version in AFTER_SQL:
                AFTER_SQL[version](db, tx)
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
            applied_now.append(version)
    return applied_now


def open_database(url: str) -> Database:
    """Open `url` and bring its schema up to date."""
    db = Database(url)
    migrate(db)
    return db
