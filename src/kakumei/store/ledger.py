"""The credit ledger: append-only rows (who, how much, why, which job or worker).

A balance is the sum of a user's rows. `users.balance`, `earned` and `spent` are running
totals written in the same transaction as each row (so admission reads one row), and the
user's merit weight is recomputed there too; `balance()` sums the rows themselves.

Sign: amount > 0 credits the user, amount < 0 debits. A row that names a job is unique per
(job_id, reason): a job is paid for once and its work is paid once, however often a report
is retried (a second add raises the database's IntegrityError).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kakumei.fairness.credits import MeritPolicy, merit_weight
from kakumei.store.db import Database, Transaction
from kakumei.store.users import UserStore

# Reasons: what a row is for.
EARN_WORK = "work"  # a worker owned by the user delivered compute units
SPEND_GENERATION = "generation"  # the user's job was accepted: its cost is held (reserved)
GRANT = "grant"  # an admin gave (or, negative, took back) credit
REFUND = "refund"  # money back for what a job reserved but did not generate
PENALTY = "penalty"  # a worker's result failed verification
REASONS = frozenset({EARN_WORK, SPEND_GENERATION, GRANT, REFUND, PENALTY})


@dataclass(frozen=True)
class Entry:
    id: int
    user_id: int
    amount: float
    reason: str
    job_id: str | None
    worker_id: str | None
    note: str | None
    created_at: float


LATEST_ENTRIES = """
SELECT id, user_id, amount, reason, job_id, worker_id, note, created_at FROM ledger
WHERE user_id = ? ORDER BY id DESC LIMIT ?
"""


def _entry(row: dict) -> Entry:
    return Entry(int(row["id"]), int(row["user_id"]), float(row["amount"]), row["reason"], row["job_id"],
                 row["worker_id"], row["note"], float(row["created_at"]))


class Ledger:
    """Credits: add rows, read balances. `policy` turns a balance into a weight."""

    def __init__(
        self, db: Database, policy: MeritPolicy = MeritPolicy(), *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.policy = policy
        self.clock = clock

    def add(
        self,
        user_id: int,
        amount: float,
        reason: str,
        *,
        job_id: str | None = None,
        worker_id: str | None = None,
        note: str | None = None,
        conn: Transaction | None = None,
    ) -> None:
        """Append one row. With `conn` (an open `Transaction`), it commits or rolls back with
        the caller's work, e.g. completing a job and paying its worker's owner."""
        self._valid(amount, reason)
        if conn is not None:
            self._add(conn, user_id, amount, reason, job_id, worker_id, note)
            return
        with self.db.transaction() as tx:
            self._add(tx, user_id, amount, reason, job_id, worker_id, note)

    @staticmethod
    def _valid(amount: float, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown ledger reason {reason!r}; known: {', '.join(sorted(REASONS))}")
        if amount != amount or amount in (float("inf"), float("-inf")):
            raise ValueError(f"ledger amount must be a finite number, got {amount}")

    def _add(
        self, tx: Transaction, user_id: int, amount: float, reason: str,
        job_id: str | None, worker_id: str | None, note: str | None,
    ) -> None:
        tx.execute(*self._insert(user_id, amount, reason, job_id, worker_id, note))
        # A refund undoes spending: it lowers `spent`, it is not earned.
        row = UserStore.add_to_totals(tx, user_id, amount, undo_spend=reason == REFUND)
        self.totals_written(tx, user_id, row)

    def _insert(
        self, user_id: int, amount: float, reason: str, job_id: str | None, worker_id: str | None, note: str | None
    ) -> tuple[str, tuple]:
        return (
            "INSERT INTO ledger (user_id, amount, reason, job_id, worker_id, note, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user_id, amount, reason, job_id, worker_id, note, self.clock()),
        )

    def add_statements(
        self, user_id: int, amount: float, reason: str, *, job_id: str | None = None
    ) -> list[tuple[str, tuple]]:
        """`add`'s two writes (the row, the running totals), for the caller to run in a batch
        with its own; the totals' result then goes to `totals_written`."""
        self._valid(amount, reason)
        return [self._insert(user_id, amount, reason, job_id, None, None),
                UserStore.totals_statement(user_id, amount, undo_spend=reason == REFUND)]

    def totals_written(self, tx: Transaction, user_id: int, row: dict | None) -> None:
        """After the running totals moved (the row ADD_TO_TOTALS returned): the weight."""
        if row is None:
            raise ValueError(f"no user with id {user_id}")
        self.apply_weight(tx, user_id, row)

    def apply_weight(self, tx: Transaction, user_id: int, row: dict) -> float:
        """Write the weight of a user row (is_anonymous, balance, weight_override) under the
        policy; return it."""
        weight = merit_weight(
            self.policy,
            is_anonymous=bool(row["is_anonymous"]),
            balance=float(row["balance"]),
            override=row["weight_override"],
        )
        # A row that carries the weight it has (ADD_TO_TOTALS, SET_WEIGHT_OVERRIDE) is written
        # only when the weight changes: most ledger rows do not change it.
        if "weight" not in row or float(row["weight"]) != weight:
            UserStore.write_weight(tx, user_id, weight)
        return weight

    def balance(self, user_id: int) -> float:
        """The sum of the user's rows (0 for a user with none)."""
        with self.db.transaction(write=False) as tx:
            value = tx.scalar("SELECT COALESCE(SUM(amount), 0) AS b FROM ledger WHERE user_id = ?", (user_id,))
        return float(value or 0.0)

    def entries(self, user_id: int, limit: int = 100) -> list[Entry]:
        """The user's latest rows, newest first."""
        with self.db.transaction(write=False) as tx:
            return [_entry(r) for r in tx.all(LATEST_ENTRIES, (user_id, limit))]

    def refresh_weights(self) -> int:
        """Recompute every user's weight under this policy (at start: settings may have
        changed). Returns how many changed."""
        changed = 0
        with self.db.transaction() as tx:
            for row in tx.all("SELECT id, is_anonymous, balance, weight_override, weight FROM users"):
                changed += self.apply_weight(tx, int(row["id"]), row) != float(row["weight"])
        return changed
