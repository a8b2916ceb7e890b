"""Each caller's own A1111 options (migration 0006), in the database: they survive a restart
and every server sharing the database sees the same ones.

A caller is a user and a scope: anonymous visitors share one user and are told apart by
address; a registered user's scope is "". What is kept is already checked (server/a1111/
mapping.py accepts a fixed set of names with bounded values), so a row stays small.
`OptionStore` is the only writer of `caller_options`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from kakumei.store.db import Database

# Anonymous visitors can come from very many addresses; past this many rows of theirs the
# least recently set go. Registered users are counted and bounded by their accounts.
MAX_ANONYMOUS_ROWS = 10_000

SELECT_OPTIONS = "SELECT options FROM caller_options WHERE user_id = ? AND scope = ?"
SELECT_OPTIONS_FOR_UPDATE = "SELECT options FROM caller_options WHERE user_id = ? AND scope = ? {for_update}"
INSERT_EMPTY = """
INSERT INTO caller_options (user_id, scope, options, updated_at) VALUES (?, ?, '{}', ?)
ON CONFLICT (user_id, scope) DO NOTHING
"""
WRITE_OPTIONS = "UPDATE caller_options SET options = ?, updated_at = ? WHERE user_id = ? AND scope = ?"
COUNT_ROWS_OF_USER = "SELECT COUNT(*) AS n FROM caller_options WHERE user_id = ?"
# The oldest rows of one user beyond the newest `keep` (read caller_options_by_age).
DROP_OLDEST = """
DELETE FROM caller_options WHERE user_id = ? AND scope IN (
    SELECT scope FROM caller_options WHERE user_id = ? ORDER BY updated_at DESC, scope LIMIT -1 OFFSET ?
)
"""
DROP_OLDEST_PG = """
DELETE FROM caller_options WHERE user_id = ? AND scope IN (
    SELECT scope FROM caller_options WHERE user_id = ? ORDER BY updated_at DESC, scope OFFSET ?
)
"""


class OptionStore:
    """Options per (user, scope), as JSON objects merged on each update."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def get(self, user_id: int, scope: str) -> dict[str, Any]:
        with self.db.transaction(write=False) as tx:
            raw = tx.scalar(SELECT_OPTIONS, (user_id, scope))
        return {} if raw is None else dict(json.loads(raw))

    def update(self, user_id: int, scope: str, values: Mapping[str, Any], *, bounded: bool = False) -> dict[str, Any]:
        """Merge `values` into the caller's options; return them all. With `bounded` (the
        anonymous user), the user keeps at most MAX_ANONYMOUS_ROWS rows, the newest."""
        now = self.clock()
        with self.db.transaction() as tx:
            created = tx.run(INSERT_EMPTY, (user_id, scope, now)) > 0
            # The row is locked until the commit, so two updates of one caller both land.
            raw = tx.scalar(SELECT_OPTIONS_FOR_UPDATE, (user_id, scope))
            merged = {**json.loads(raw or "{}"), **values}
            tx.run(WRITE_OPTIONS, (json.dumps(merged, sort_keys=True), now, user_id, scope))
            if bounded and created and int(tx.scalar(COUNT_ROWS_OF_USER, (user_id,)) or 0) > MAX_ANONYMOUS_ROWS:
                drop = DROP_OLDEST if tx.dialect == "sqlite" else DROP_OLDEST_PG
                tx.run(drop, (user_id, user_id, MAX_ANONYMOUS_ROWS))
        return merged
