"""Users and their API keys. Keys are stored as SHA-256 hashes only.

A key is 32 random bytes, so a fast hash is enough: there is nothing to guess that a slow
password hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from kakumei.store.db import Database

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
                    f"INSERT INTO users (name, key_hash, weight, weight_override, is_admin, created_at) "
                    f"VALUES (?, ?, ?, ?, ?, ?) RETURNING {_COLUMNS}",
                    (name, hash_key(key), 1.0 if weight is None else weight, weight, int(admin), time.time()),
                )
        except self.db.integrity_errors:
            raise UserExists(f"a user named {name!r} already exists") from None
        assert row is not None
        return _user(row), key

    def by_key(self, key: str) -> User | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM users WHERE key_hash = ?", (hash_key(key),))
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
