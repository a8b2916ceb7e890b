"""Counts that admission control reads at submit: what a user, an address and the
anonymous visitors have queued, and the next queued job whose ETA says when to retry.

The queue caps are also held inside the transaction that queues a job (`hold_queue_limits`,
called by `JobStore.submit`): counting in one transaction and inserting in another would let
concurrent submits all pass the same count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from kakumei.fairness.credits import is_free_tier
from kakumei.store.db import Database, Transaction
from kakumei.store.users import UserStore

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
        return count_queue(tx, user_id, addr, anonymous)


def count_queue(tx: Transaction, user_id: int, addr: str | None, anonymous: bool) -> QueueCounts:
    """The counts, read in an open transaction."""
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


@dataclass(frozen=True)
class QueueLimits:
    """The queue caps one submit must stay under; None where a cap does not apply to it."""

    anonymous: bool  # the caller is an anonymous visitor: `own` counts from their address
    own: int | None = None
    anonymous_group: int | None = None  # all anonymous visitors together
    free_at_addr: int | None = None  # free-tier jobs from the caller's address
    free_users_at_addr: int | None = None  # free-tier users with jobs queued from it


# The names `first_full` answers with, one per cap.
OWN, ANONYMOUS_GROUP, FREE_AT_ADDR, FREE_USERS_AT_ADDR = "own", "anonymous_group", "free_at_addr", "free_users_at_addr"


def first_full(counts: QueueCounts, limits: QueueLimits, user_id: int) -> str | None:
    """The first cap that one more job of `user_id` would break, or None."""
    if limits.own is not None and counts.own >= limits.own:
        return OWN
    if limits.anonymous_group is not None and counts.anonymous >= limits.anonymous_group:
        return ANONYMOUS_GROUP
    if limits.free_at_addr is not None and counts.free_at_addr >= limits.free_at_addr:
        return FREE_AT_ADDR
    if (
        limits.free_users_at_addr is not None
        and user_id not in counts.free_users_at_addr
        and len(counts.free_users_at_addr) >= limits.free_users_at_addr
    ):
        return FREE_USERS_AT_ADDR
    return None


class QueueFull(Exception):
    """A cap was reached while the job was being queued; nothing was queued."""

    def __init__(self, cap: str, counts: QueueCounts) -> None:
        super().__init__(f"queue cap {cap} reached")
        self.cap = cap
        self.counts = counts


# Free-tier caps count jobs of several users at one address, so the user row lock does not
# serialize them; on PostgreSQL a transaction-scoped advisory lock on the address does.
# (SQLite's write transactions already run one at a time.) Two-key form, namespace first:
# its key space does not overlap the migrations' one-key lock.
_ADDR_LOCK_NAMESPACE = 7_363_002
LOCK_ADDR = "SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), CAST(? AS INTEGER))"


def _addr_lock_key(addr: str) -> int:
    return int.from_bytes(hashlib.sha256(addr.encode("utf-8")).digest()[:4], "big", signed=True)


def hold_queue_limits(tx: Transaction, user_id: int, addr: str | None, limits: QueueLimits) -> None:
    """Raise QueueFull unless one more job of the user stays under `limits`.

    Call it in the transaction that queues the job, before the job is inserted. The user's
    row lock makes concurrent submits of one user (and of all anonymous visitors, who share a
    user) count one after another, and the address lock does the same for the free-tier caps
    of one address. Locks are taken address first, then user, always, so two submits never
    wait for each other in a circle.
    """
    if tx.dialect == "postgresql" and addr and (limits.free_at_addr is not None or limits.free_users_at_addr is not None):
        tx.execute(LOCK_ADDR, (_ADDR_LOCK_NAMESPACE, _addr_lock_key(addr)))
    UserStore.lock(tx, user_id)
    counts = count_queue(tx, user_id, addr, limits.anonymous)
    cap = first_full(counts, limits, user_id)
    if cap is not None:
        raise QueueFull(cap, counts)


def next_queued(db: Database, *, user_id: int | None = None, addr: str | None = None) -> str | None:
    """Id of the user's (or the address's) job that will start first, if any."""
    with db.transaction(write=False) as tx:
        if user_id is not None:
            return tx.scalar(NEXT_QUEUED_OF_USER, (user_id,))
        return tx.scalar(NEXT_QUEUED_AT_ADDR, (addr,))


def idempotent_replay(db: Database, user_id: int, scope: str, key: str) -> bool:
    """Whether the caller (the user, and for anonymous visitors their address: `scope`) already
    submitted with this Idempotency-Key (a retry is no new job)."""
    with db.transaction(write=False) as tx:
        return tx.one(
            "SELECT 1 AS x FROM jobs WHERE user_id = ? AND idempotency_scope = ? AND idempotency_key = ?",
            (user_id, scope, key),
        ) is not None


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
