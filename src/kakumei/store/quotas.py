"""Counts that admission control reads at submit: what a user, an address and the
anonymous visitors have queued, and the next queued job whose ETA says when to retry."""

from __future__ import annotations

from dataclasses import dataclass

from kakumei.fairness.credits import is_free_tier
from kakumei.store.db import Database

# Queued jobs per user from one address, with the columns that decide the user's tier: the
# free-tier rule is credits.is_free_tier alone, applied to these rows, so it cannot drift
# from the one admission applies to the caller. Reads jobs_queued_by_addr; one row per user.
QUEUED_AT_ADDR_BY_USER = """
SELECT j.user_id, u.is_anonymous, u.balance, u.weight_override, u.is_admin, COUNT(*) AS n
FROM jobs j JOIN users u ON u.id = j.user_id
WHERE j.client_addr = ? AND j.state = 'queued'
GROUP BY j.user_id, u.is_anonymous, u.balance, u.weight_override, u.is_admin
"""

QUEUED_OF_USER_AT_ADDR = "SELECT COUNT(*) AS n FROM jobs WHERE client_addr = ? AND user_id = ? AND state = 'queued'"
QUEUED_OF_USER = "SELECT queued_jobs FROM users WHERE id = ?"
QUEUED_ALL = "SELECT COALESCE(SUM(queued_jobs), 0) AS n FROM users WHERE queued_jobs > 0"
QUEUED_ANONYMOUS = "SELECT COALESCE(SUM(queued_jobs), 0) AS n FROM users WHERE is_anonymous = 1"
NEXT_QUEUED_OF_USER = """
SELECT id FROM jobs WHERE user_id = ? AND state = 'queued' ORDER BY priority DESC, seq LIMIT 1
"""
NEXT_QUEUED_AT_ADDR = "SELECT id FROM jobs WHERE client_addr = ? AND state = 'queued' ORDER BY seq LIMIT 1"


@dataclass(frozen=True)
class QueueCounts:
    total: int  # queued jobs on the server
    own: int  # the caller's (anonymous: from their address)
    anonymous: int  # all anonymous visitors together
    free_at_addr: int  # free-tier jobs from the caller's address
    free_users_at_addr: frozenset[int]  # free-tier users with jobs queued from that address


def queue_counts(db: Database, user_id: int, addr: str | None, anonymous: bool) -> QueueCounts:
    with db.transaction(write=False) as tx:
        total = int(tx.scalar(QUEUED_ALL) or 0)
        anon = int(tx.scalar(QUEUED_ANONYMOUS) or 0)
        if anonymous:
            own = int(tx.scalar(QUEUED_OF_USER_AT_ADDR, (addr or "", user_id)) or 0)
        else:
            own = int(tx.scalar(QUEUED_OF_USER, (user_id,)) or 0)
        at_addr = tx.all(QUEUED_AT_ADDR_BY_USER, (addr,)) if addr else []
    rows = [r for r in at_addr if is_free_tier(
        is_anonymous=bool(r["is_anonymous"]), balance=float(r["balance"]),
        override=r["weight_override"], is_admin=bool(r["is_admin"]))]
    return QueueCounts(
        total=total,
        own=own,
        anonymous=anon,
        free_at_addr=sum(int(r["n"]) for r in rows),
        free_users_at_addr=frozenset(int(r["user_id"]) for r in rows),
    )


def next_queued(db: Database, *, user_id: int | None = None, addr: str | None = None) -> str | None:
    """Id of the user's (or the address's) job that will start first, if any."""
    with db.transaction(write=False) as tx:
        if user_id is not None:
            return tx.scalar(NEXT_QUEUED_OF_USER, (user_id,))
        return tx.scalar(NEXT_QUEUED_AT_ADDR, (addr,))


def idempotent_replay(db: Database, user_id: int, key: str) -> bool:
    """Whether the user already submitted with this Idempotency-Key (a retry is no new job)."""
    with db.transaction(write=False) as tx:
        return tx.one("SELECT 1 AS x FROM jobs WHERE user_id = ? AND idempotency_key = ?", (user_id, key)) is not None


def backlogged_weights(db: Database) -> dict[int, float]:
    """Weight of every user with queued work (their share is weight / the sum)."""
    with db.transaction(write=False) as tx:
        rows = tx.all("SELECT id, weight FROM users WHERE queued_jobs > 0")
    return {int(r["id"]): float(r["weight"]) for r in rows}


def totals(db: Database, user_id: int) -> tuple[float, float]:
    """(earned, spent) running totals of the user's ledger."""
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT earned, spent FROM users WHERE id = ?", (user_id,))
    return (0.0, 0.0) if row is None else (float(row["earned"]), float(row["spent"]))
