"""Users: their API keys, and every write to the `users` table.

Keys are stored as SHA-256 hashes only. A key is 32 random bytes, so a fast hash is enough:
there is nothing to guess that a slow password hash would protect.

Other stores change a user row only through the methods here that take their open
transaction: the queue's bookkeeping (JobStore), the ledger's running totals and the merit
weight (Ledger), the admin weight and flag (Moderation).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from kakumei.fairness import shares
from kakumei.store.db import Database, Transaction

KEY_PREFIX = "kk_"
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class User:
    id: int
    name: str
    is_anonymous: bool
    weight: float
    virtual_counter: float
    queued_jobs: int
    created_at: float
    balance: float = 0.0
    weight_override: float | None = None
    is_admin: bool = False


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _user(row: dict) -> User:
    return User(
        id=int(row["id"]),
        name=row["name"],
        is_anonymous=bool(row["is_anonymous"]),
        weight=float(row["weight"]),
        virtual_counter=float(row["virtual_counter"]),
        queued_jobs=int(row["queued_jobs"]),
        created_at=float(row["created_at"]),
        balance=float(row["balance"]),
        weight_override=None if row["weight_override"] is None else float(row["weight_override"]),
        is_admin=bool(row["is_admin"]),
    )


_COLUMNS = (
    "id, name, is_anonymous, weight, virtual_counter, queued_jobs, created_at, balance, "
    "weight_override, is_admin"
)


# -- queue bookkeeping ------------------------------------------------------------------------
# `queued_jobs` and `queued_cost` follow the user's jobs in state 'queued', so that the partial
# index users_backlogged (virtual_counter, id) WHERE queued_jobs > 0 lists exactly the waiting
# users in counter order. `virtual_counter` advances by cost / weight when a job is served.
# Every move of a job into or out of 'queued' goes through one of these statements.

# A job joins the queue; the counter is the one `enqueue` lifted.
ENQUEUE_JOB = """
UPDATE users SET queued_jobs = queued_jobs + 1, queued_cost = queued_cost + ?, virtual_counter = ?
WHERE id = ?
"""

# A job leaves the queue: served (its owner's counter advances by the charge, at claim) or
# cancelled (charge 0). The last job out zeroes queued_cost, so float residue never builds up.
DEQUEUE_JOB = """
UPDATE users SET virtual_counter = virtual_counter + ?,
    queued_jobs = queued_jobs - 1,
    queued_cost = CASE WHEN queued_jobs <= 1 THEN 0 ELSE queued_cost - ? END
WHERE id = ?
"""

# A served job comes back (lost lease, release): it queues again and its charge is given back.
REQUEUE_JOB = """
UPDATE users SET virtual_counter = virtual_counter - ?, queued_jobs = queued_jobs + 1,
    queued_cost = queued_cost + ?
WHERE id = ?
"""

# Where a user coming back with nothing queued starts (no banking of idle time).
BACKLOGGED_MIN_COUNTER = "SELECT MIN(virtual_counter) AS c FROM users WHERE queued_jobs > 0"
SYSTEM_MAX_COUNTER = "SELECT MAX(virtual_counter) AS c FROM users"

# -- credit and merit ---------------------------------------------------------------------------

# The ledger's running totals, written with each ledger row; returns what the weight needs.
ADD_TO_TOTALS = """
UPDATE users SET balance = balance + ?, earned = earned + ?, spent = spent + ?
WHERE id = ? RETURNING is_anonymous, balance, weight_override
"""
SET_WEIGHT_OVERRIDE = """
UPDATE users SET weight_override = ? WHERE id = ? RETURNING is_anonymous, balance, weight_override
"""


class UserExists(ValueError):
    pass


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, name: str, weight: float | None = None, *, admin: bool = False) -> tuple[User, str]:
        """Create a user; return it and its API key (shown once, stored hashed).

        `weight` None: the weight follows merit (fairness/credits.py); a number: an admin set it.
        """
        name = name.strip()
        if not name or name == ANONYMOUS:
            raise ValueError(f"invalid user name {name!r}")
        if weight is not None and not weight > 0:
            raise ValueError(f"weight must be above 0, got {weight}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.db.transaction() as tx:
                row = tx.one(
                    f"INSERT INTO users (name, kind, weight, weight_override, is_admin, created_at) "
                    f"VALUES (?, 'operator', ?, ?, ?, ?) RETURNING {_COLUMNS}",
                    (name, 1.0 if weight is None else weight, weight, int(admin), time.time()),
                )
                assert row is not None
                # The operator's key is the user's first; store/accounts.py writes the others.
                tx.run(
                    "INSERT INTO api_keys (user_id, key_hash, label, created_at) VALUES (?, ?, 'kakumei users add', ?)",
                    (row["id"], hash_key(key), time.time()),
                )
        except self.db.integrity_errors:
            raise UserExists(f"a user named {name!r} already exists") from None
        assert row is not None
        return _user(row), key

    def by_key(self, key: str) -> User | None:
        """The user holding `key`, unless the key was revoked (store/accounts.py keeps keys)."""
        with self.db.transaction(write=False) as tx:
            # A revoked key fails at once: only live keys are looked at.
            row = tx.one(
                f"SELECT {_COLUMNS} FROM users WHERE id = "
                f"(SELECT user_id FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL)",
                (hash_key(key),),
            )
        return None if row is None else _user(row)

    def by_name(self, name: str) -> User | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,))
        return None if row is None else _user(row)

    def get(self, user_id: int) -> User | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return None if row is None else _user(row)

    def anonymous(self) -> User:
        user = self.by_name(ANONYMOUS)
        assert user is not None, "the anonymous user is created by the first migration"
        return user

    def list(self) -> list[User]:
        with self.db.transaction(write=False) as tx:
            rows = tx.all(f"SELECT {_COLUMNS} FROM users ORDER BY id")
        return [_user(r) for r in rows]

    # -- writes inside another store's transaction ----------------------------------------

    @staticmethod
    def lock(tx: Transaction, user_id: int) -> None:
        """Hold the user's row until the transaction ends (PostgreSQL; SQLite's write
        transactions run one at a time anyway): submits of one user then count one after
        another."""
        if tx.one("SELECT id FROM users WHERE id = ? {for_update}", (user_id,)) is None:
            raise ValueError(f"no user with id {user_id}")

    @staticmethod
    def enqueue(tx: Transaction, user_id: int, cost: float) -> None:
        """A job of `cost` joins the user's queue. A user who had nothing queued is lifted to
        where the others are (shares.lifted_counter), so idle time cannot be banked."""
        user = tx.one("SELECT virtual_counter, queued_jobs FROM users WHERE id = ? {for_update}", (user_id,))
        if user is None:
            raise ValueError(f"no user with id {user_id}")
        counter = float(user["virtual_counter"])
        if int(user["queued_jobs"]) == 0:
            lowest, highest = tx.scalar(BACKLOGGED_MIN_COUNTER), tx.scalar(SYSTEM_MAX_COUNTER)
            counter = shares.lifted_counter(counter, lowest, highest)
        tx.run(ENQUEUE_JOB, (cost, counter, user_id))

    @staticmethod
    def charge(tx: Transaction, user_id: int, cost: float, charged: float) -> None:
        """A queued job of `cost` was claimed: it leaves the queue and the counter advances."""
        tx.run(DEQUEUE_JOB, (charged, cost, user_id))

    @staticmethod
    def dequeue(tx: Transaction, user_id: int, cost: float) -> None:
        """A queued job of `cost` was cancelled before anyone served it: nothing is charged."""
        tx.run(DEQUEUE_JOB, (0.0, cost, user_id))

    @staticmethod
    def refund(tx: Transaction, user_id: int, cost: float, charged: float) -> None:
        """A claimed job went back to the queue: the owner paid for a run that did not happen."""
        tx.run(REQUEUE_JOB, (charged, cost, user_id))

    @staticmethod
    def add_to_totals(tx: Transaction, user_id: int, amount: float) -> dict | None:
        """Move the running totals by one ledger row; the row the weight is computed from
        (None: no such user)."""
        return tx.one(ADD_TO_TOTALS, (amount, max(0.0, amount), max(0.0, -amount), user_id))

    @staticmethod
    def write_weight(tx: Transaction, user_id: int, weight: float) -> None:
        tx.run("UPDATE users SET weight = ? WHERE id = ? AND weight <> ?", (weight, user_id, weight))

    @staticmethod
    def set_weight_override(tx: Transaction, user_id: int, weight: float | None) -> dict | None:
        """An admin's weight (None: merit decides); the row the weight is computed from."""
        return tx.one(SET_WEIGHT_OVERRIDE, (weight, user_id))

    @staticmethod
    def set_admin(tx: Transaction, user_id: int, admin: bool) -> None:
        tx.run("UPDATE users SET is_admin = ? WHERE id = ?", (int(admin), user_id))
