"""The only code that speaks SQL. SQLite (default) and PostgreSQL share one code path."""

from kakumei.store.db import Database
from kakumei.store.migrate import open_database

__all__ = ["Database", "open_database"]
