"""Counts that admission control reads at submit: what a person, their fair-share group and
the anonymous visitors have queued, and the next queued job whose ETA says when to retry.

The queue caps are also held inside the transaction that queues a job (`hold_queue_limits`,
called by `JobStore.submit`): counting in one transaction and inserting in another would let
concurrent submits all pass the same count. Caps count per person (a keyless caller is one
person per address) and per group (fairness/groups.py): the free-tier caps count every
free-tier person of a network group together, however many keys they hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from kakumei.fairness.credits import is_free_tier
from kakumei.store.db import Database, Transaction
from kakumei.store.users import GROUP_OF_KEY, Placement

# The people with jobs queued in one group, with the columns that decide their tier: the
# free-tier rule is credits.is_free_tier alone, applied to these rows, so it cannot drift
# from the one admission applies to the caller. Reads users_backlogged_in_group.
QUEUED_IN_GROUP_BY_USER = """
SELECT id, is_anonymous, balance, weight_override, is_admin, queued_jobs AS n FROM users
WHERE group_id = ? AND queued_jobs > 0
"""
USER_QUEUE = "SELECT group_id, queued_jobs FROM users WHERE id = ?"
# All queued jobs, and those of keyless callers, in one read of the backlogged people.
QUEUED_ALL_AND_ANONYMOUS = """
SELECT COALESCE(SUM(queued_jobs), 0) AS n, COALESCE(SUM(CASE WHEN is_anonymous = 1 THEN queued_jobs ELSE 0 END), 0) AS anon
FROM users WHERE queued_jobs > 0
"""
NEXT_QUEUED_OF_USER = """
SELECT id FROM jobs WHERE user_id = ? AND state = 'queued' ORDER BY priority DESC, seq LIMIT 1
"""
# Some keyless person with jobs queued (the cap of all of them together waits on theirs).
A_QUEUED_KEYLESS_PERSON = "SELECT id FROM users WHERE queued_jobs > 0 AND is_anonymous = 1 ORDER BY id LIMIT 1"
NEXT_QUEUED_IN_GROUP = "SELECT id FROM jobs WHERE group_id = ? AND state = 'queued' ORDER BY seq LIMIT 1"


@dataclass(frozen=True)
class QueueCounts:
    total: int  # queued jobs on the server
    own: int  # the caller's (a keyless caller: their address's)
    anonymous: int  # all keyless callers together
    free_in_group: int  # free-tier jobs queued in the group the caller's next job joins
    free_users_in_group: frozenset[int]  # free-tier people with jobs queued in it
    group_id: int | None = None  # that group (None: it has never queued anything)


def group_of_next_job(tx: Transaction, user_id: int, group_key: str) -> int | None:
    """The group the user's next job joins: theirs while they have jobs queued, else the one
    `group_key` names (None if it does not exist yet: nothing is queued in it)."""
    row = tx.one(USER_QUEUE, (user_id,))
    if row is not None and int(row["queued_jobs"]) > 0 and row["group_id"] is not None:
        return int(row["group_id"])
    found = tx.scalar(GROUP_OF_KEY, (group_key,))
    return None if found is None else int(found)


def queue_counts(db: Database, user_id: int, group_key: str) -> QueueCounts:
    """The counts for the group the user's next job joins (group_of_next_job), in two round
    trips: the user's row, the keyed group and the totals together, then the group's people."""
    with db.transaction(write=False) as tx:
        user, keyed, queued = tx.batch([(USER_QUEUE, (user_id,)), (GROUP_OF_KEY, (group_key,)),
                                        (QUEUED_ALL_AND_ANONYMOUS, ())])
        row = user.one()
        own = 0 if row is None else int(row["queued_jobs"])
        if row is not None and own > 0 and row["group_id"] is not None:
            group_id: int | None = int(row["group_id"])
        else:
            found = keyed.scalar()
            group_id = None if found is None else int(found)
        in_group = tx.all(QUEUED_IN_GROUP_BY_USER, (group_id,)) if group_id is not None else []
        totals = queued.one()
        assert totals is not None
        return _counts(totals, own, in_group, group_id)


def queued_total(db: Database) -> int:
    """Queued jobs on the server (QueueCounts.total) alone: one read."""
    with db.transaction(write=False) as tx:
        row = tx.one(QUEUED_ALL_AND_ANONYMOUS)
    return 0 if row is None else int(row["n"] or 0)


def count_queue(tx: Transaction, user_id: int, group_id: int | None, *, own: int | None = None) -> QueueCounts:
    """The counts, read in an open transaction (`own`: the user's queued jobs, if the caller
    read them already in it)."""
    queued = tx.one(QUEUED_ALL_AND_ANONYMOUS)
    assert queued is not None
    if own is None:
        own_row = tx.one(USER_QUEUE, (user_id,))
        own = 0 if own_row is None else int(own_row["queued_jobs"])
    in_group = tx.all(QUEUED_IN_GROUP_BY_USER, (group_id,)) if group_id is not None else []
    return _counts(queued, own, in_group, group_id)


def count_reads(group_id: int) -> list[tuple[str, tuple]]:
    """The reads of `count_queue` but the caller's own row, for UserStore.place to run with
    its locks (`reads`); `hold_queue_limits` counts from their results."""
    return [(QUEUED_ALL_AND_ANONYMOUS, ()), (QUEUED_IN_GROUP_BY_USER, (group_id,))]


def _counts(queued: dict, own: int, in_group: list[dict], group_id: int | None) -> QueueCounts:
    total, anon = int(queued["n"] or 0), int(queued["anon"] or 0)
    rows = [r for r in in_group if is_free_tier(
        is_anonymous=bool(r["is_anonymous"]), balance=float(r["balance"]),
        override=r["weight_override"], is_admin=bool(r["is_admin"]))]
    return QueueCounts(
        total=total,
        own=own,
        anonymous=anon,
        free_in_group=sum(int(r["n"]) for r in rows),
        free_users_in_group=frozenset(int(r["id"]) for r in rows),
        group_id=group_id,
    )


@dataclass(frozen=True)
class QueueLimits:
    """The queue caps one submit must stay under; None where a cap does not apply to it."""

    own: int | None = None  # the person's queued jobs
    anonymous_group: int | None = None  # all keyless callers together
    free_in_group: int | None = None  # free-tier jobs in the caller's group
    free_users_in_group: int | None = None  # free-tier people with jobs queued in it
    # The job is beyond the free tier: the balance must cover all of its cost.
    cover: bool = False


# The names `first_full` answers with, one per cap.
OWN, ANONYMOUS_GROUP, FREE_IN_GROUP, FREE_USERS_IN_GROUP = "own", "anonymous_group", "free_in_group", "free_users_in_group"


def first_full(counts: QueueCounts, limits: QueueLimits, user_id: int) -> str | None:
    """The first cap that one more job of `user_id` would break, or None."""
    if limits.own is not None and counts.own >= limits.own:
        return OWN
    if limits.anonymous_group is not None and counts.anonymous >= limits.anonymous_group:
        return ANONYMOUS_GROUP
    if limits.free_in_group is not None and counts.free_in_group >= limits.free_in_group:
        return FREE_IN_GROUP
    if (
        limits.free_users_in_group is not None
        and user_id not in counts.free_users_in_group
        and len(counts.free_users_in_group) >= limits.free_users_in_group
    ):
        return FREE_USERS_IN_GROUP
    return None


class QueueFull(Exception):
    """A cap was reached while the job was being queued; nothing was queued."""

    def __init__(self, cap: str, counts: QueueCounts) -> None:
        super().__init__(f"queue cap {cap} reached")
        self.cap = cap
        self.counts = counts


# The cap of all keyless callers together counts jobs of many groups, so no group's row lock
# serializes it; on PostgreSQL a transaction-scoped advisory lock does. Two-key form,
# namespace first: its key space does not overlap the migrations' one-key lock.
_CAP_LOCK_NAMESPACE, _ANONYMOUS_CAP = 7_363_002, 1
LOCK_CAP = "SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), CAST(? AS INTEGER))"


def lock_shared_caps(tx: Transaction, limits: QueueLimits) -> None:
    """Take the locks of caps wider than one group; before UserStore.place, always, so that
    locks are taken in one order (this, then the group, then the person)."""
    if tx.dialect == "postgresql" and limits.anonymous_group is not None:
        tx.execute(LOCK_CAP, (_CAP_LOCK_NAMESPACE, _ANONYMOUS_CAP))


def hold_queue_limits(tx: Transaction, placement: Placement, limits: QueueLimits) -> None:
    """Raise QueueFull unless one more job of the placed user stays under `limits`.

    Call it in the transaction that queues the job, after UserStore.place and before the
    job is inserted: place holds the group's row and then the user's, so concurrent submits
    of one person, and of one group (however many keys and addresses it has), count one
    after another on PostgreSQL; SQLite's write transactions run one at a time anyway.
    """
    own = None if placement.user is None else int(placement.user["queued_jobs"])
    if own is not None and len(placement.reads) == 2 and placement.reads[0].one() is not None:
        # read by place under its locks (count_reads)
        counts = _counts(placement.reads[0].one(), own, placement.reads[1].rows, placement.group_id)
    else:
        counts = count_queue(tx, placement.user_id, placement.group_id, own=own)
    cap = first_full(counts, limits, placement.user_id)
    if cap is not None:
        raise QueueFull(cap, counts)


class NotCovered(Exception):
    """A job beyond the free tier costs more than the balance holds; nothing was queued."""

    def __init__(self, cost: float, balance: float) -> None:
        super().__init__(f"the job costs {cost:.2f} credits, the balance is {balance:.2f}")
        self.cost = cost
        self.balance = balance

    @property
    def missing(self) -> float:
        return self.cost - max(0.0, self.balance)


def hold_credit(
    tx: Transaction, user_id: int, cost: float, limits: QueueLimits, placement: Placement | None = None
) -> None:
    """Raise NotCovered when `limits.cover` and the user's balance is below `cost`. Call it
    after UserStore.place (which holds the user's row), in the transaction that reserves the
    cost: the balance read here (or by place under the row's lock) is the one the
    reservation spends."""
    if not limits.cover:
        return
    if placement is not None and placement.user is not None and placement.user_id == user_id:
        balance = float(placement.user["balance"] or 0.0)
    else:
        balance = float(tx.scalar("SELECT balance FROM users WHERE id = ?", (user_id,)) or 0.0)
    # A thousandth of a credit of slack: the same sum computed twice may differ in its last bits.
    if balance + 1e-9 < cost:
        raise NotCovered(cost, balance)


def next_queued(
    db: Database, *, user_id: int | None = None, group_id: int | None = None, keyless: bool = False
) -> str | None:
    """Id of the user's job that will start first, or the group's oldest, or (`keyless`) the
    next of some keyless person, if any."""
    with db.transaction(write=False) as tx:
        if keyless:
            user_id = tx.scalar(A_QUEUED_KEYLESS_PERSON)
            if user_id is None:
                return None
        if user_id is not None:
            return tx.scalar(NEXT_QUEUED_OF_USER, (user_id,))
        return tx.scalar(NEXT_QUEUED_IN_GROUP, (group_id,))


def idempotent_replay(db: Database, user_id: int, scope: str, key: str) -> bool:
    """Whether the caller (the user, and for anonymous visitors their address: `scope`) already
    submitted with this Idempotency-Key (a retry is no new job)."""
    with db.transaction(write=False) as tx:
        return tx.one(
            "SELECT 1 AS x FROM jobs WHERE user_id = ? AND idempotency_scope = ? AND idempotency_key = ?",
            (user_id, scope, key),
        ) is not None


def group_shares(db: Database, user_id: int, group_id: int | None) -> tuple[float, list[float], float, list[float]]:
    """(the group's weight, the other backlogged groups' weights, the person's weight, the
    other backlogged people's weights in the group): what the person's share comes from."""
    with db.transaction(write=False) as tx:
        groups = {int(r["id"]): float(r["weight"]) for r in tx.all(
            "SELECT id, weight FROM fair_groups WHERE queued_jobs > 0")}
        members = {int(r["id"]): float(r["weight"]) for r in tx.all(
            "SELECT id, weight FROM users WHERE group_id = ? AND queued_jobs > 0", (group_id,))} if group_id else {}
        own = tx.scalar("SELECT weight FROM users WHERE id = ?", (user_id,))
        group = tx.scalar("SELECT weight FROM fair_groups WHERE id = ?", (group_id,)) if group_id else None
    own_weight = 1.0 if own is None else float(own)
    groups.pop(group_id or -1, None)
    members.pop(user_id, None)
    return (own_weight if group is None else float(group)), list(groups.values()), own_weight, list(members.values())


def totals(db: Database, user_id: int) -> tuple[float, float]:
    """(earned, spent) running totals of the user's ledger."""
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT earned, spent FROM users WHERE id = ?", (user_id,))
    return (0.0, 0.0) if row is None else (float(row["earned"]), float(row["spent"]))
