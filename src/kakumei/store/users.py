"""Users: every write to the `users` table but those of sign-up and guests
(store/accounts.py, which also keeps the API keys), and finding a user by key.

Keys are stored as SHA-256 hashes only. A key is 32 random bytes, so a fast hash is enough:
there is nothing to guess that a slow password hash would protect.

Other stores change a user row only through the methods here that take their open
transaction: the queue's bookkeeping (JobStore), the ledger's running totals and the merit
weight (Ledger), the admin weight and flag (Moderation). The queue's bookkeeping covers both
levels of fair share, people (`users`) and their groups (`fair_groups`): the counters of the
hierarchy are written here and nowhere else.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kakumei.fairness import shares
from kakumei.fairness.groups import OWN, is_network_group
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
    # 'operator' (made with `kakumei users add`), 'account' (signed up), 'guest', 'keyless'
    # (one address's person) or 'anonymous' (the shared keyless user of older releases).
    kind: str = "operator"


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
        kind=row["kind"],
    )


_COLUMNS = (
    "id, name, is_anonymous, weight, virtual_counter, queued_jobs, created_at, balance, "
    "weight_override, is_admin, kind"
)


# -- queue bookkeeping ------------------------------------------------------------------------
# Two levels: groups (fair_groups) and people (users). `queued_jobs` and `queued_cost` follow
# the jobs in state 'queued' at both levels, so that the partial indexes fair_groups_backlogged
# and users_backlogged_in_group list exactly the waiting groups, and each group's waiting
# people, in counter order. Serving a job advances its person's counter by cost / person
# weight and its group's by cost / group weight. A person stays in one group while they have
# jobs queued (so all their queued jobs carry that group) and joins one when they queue with
# nothing queued. Every move of a job into or out of 'queued' goes through one of these.

# A job joins the queue; the counters are the ones `enqueue` lifted.
ENQUEUE_JOB = """
UPDATE users SET queued_jobs = queued_jobs + 1, queued_cost = queued_cost + ?, virtual_counter = ?, group_id = ?
WHERE id = ?
"""
ENQUEUE_GROUP_JOB = """
UPDATE fair_groups SET queued_jobs = queued_jobs + 1, queued_cost = queued_cost + ?, virtual_counter = ?,
    weight = COALESCE(?, weight), member_max = CASE WHEN member_max < ? THEN ? ELSE member_max END
WHERE id = ?
"""

# A job leaves the queue: served (the counters advance by the charges, at claim) or cancelled
# (charges 0). The last job out zeroes queued_cost, so float residue never builds up.
DEQUEUE_JOB = """
UPDATE users SET virtual_counter = virtual_counter + ?,
    queued_jobs = queued_jobs - 1,
    queued_cost = CASE WHEN queued_jobs <= 1 THEN 0 ELSE queued_cost - ? END
WHERE id = ? RETURNING virtual_counter
"""
# member_max follows the person's counter as DEQUEUE_JOB, just before, left it.
DEQUEUE_GROUP_JOB = """
UPDATE fair_groups SET virtual_counter = virtual_counter + ?,
    queued_jobs = queued_jobs - 1,
    queued_cost = CASE WHEN queued_jobs <= 1 THEN 0 ELSE queued_cost - ? END,
    member_max = CASE WHEN member_max < (SELECT u.virtual_counter FROM users u WHERE u.id = ?)
        THEN (SELECT u.virtual_counter FROM users u WHERE u.id = ?) ELSE member_max END
WHERE id = ?
"""

# A served job comes back (lost lease, release): the charges are given back, then it queues
# again like a new job (ENQUEUE_*).
UNCHARGE_USER = "UPDATE users SET virtual_counter = virtual_counter - ? WHERE id = ?"
UNCHARGE_GROUP = "UPDATE fair_groups SET virtual_counter = virtual_counter - ? WHERE id = ?"

# Where someone coming back with nothing queued starts (no banking of idle time): a group at
# the lowest backlogged group (or the highest any group reached), a person at the lowest
# backlogged person of their group (or the highest any member reached).
BACKLOGGED_MIN_COUNTER = "SELECT MIN(virtual_counter) AS c FROM fair_groups WHERE queued_jobs > 0"
SYSTEM_MAX_COUNTER = "SELECT MAX(virtual_counter) AS c FROM fair_groups"
GROUP_MEMBERS_MIN_COUNTER = "SELECT MIN(virtual_counter) AS c FROM users WHERE group_id = ? AND queued_jobs > 0"
# Both bounds of a group's lift in one round trip.
LIFT_BOUNDS = f"SELECT ({BACKLOGGED_MIN_COUNTER}) AS lowest, ({SYSTEM_MAX_COUNTER}) AS highest"

ENSURE_GROUP = """
INSERT INTO fair_groups (key, weight, created_at) VALUES (?, 1.0, ?) ON CONFLICT (key) DO NOTHING
"""
GROUP_OF_KEY = "SELECT id FROM fair_groups WHERE key = ?"
LOCK_GROUP = "SELECT id, key, virtual_counter, queued_jobs, member_max FROM fair_groups WHERE id = ? {for_update}"
USER_QUEUE = "SELECT group_id, queued_jobs, virtual_counter, weight, balance FROM users WHERE id = ? {for_update}"
# Where the user's next job goes (read before any lock): their group while they have jobs
# queued, else the group `key` names, if it exists.
USER_PLACE = """
SELECT u.group_id, u.queued_jobs, (SELECT g.id FROM fair_groups g WHERE g.key = ?) AS keyed
FROM users u WHERE u.id = ?
"""


@dataclass(frozen=True)
class FairGroup:
    """A fair-share group as the scheduler keeps it."""

    id: int
    key: str
    weight: float
    virtual_counter: float
    queued_jobs: int
    members_queued: int  # people with jobs queued in it


@dataclass(frozen=True)
class Placement:
    """The group a user's next job joins, with both rows locked (see UserStore.place)."""

    user_id: int
    group_id: int
    group_key: str
    # The two rows as place read them under their locks (LOCK_GROUP, USER_QUEUE): what the
    # job's enqueue starts from, so it need not read them again.
    group: dict | None = field(default=None, compare=False, repr=False)
    user: dict | None = field(default=None, compare=False, repr=False)
    # Where the group and the person would be lifted to (LIFT_BOUNDS and
    # GROUP_MEMBERS_MIN_COUNTER: lowest, highest, members), read with them.
    floors: dict | None = field(default=None, compare=False, repr=False)
    # The results of the caller's own reads (`place(reads=...)`), read with them.
    reads: tuple = field(default=(), compare=False, repr=False)


# -- credit and merit ---------------------------------------------------------------------------

# The ledger's running totals, written with each ledger row; returns what the weight needs.
ADD_TO_TOTALS = """
UPDATE users SET balance = balance + ?, earned = earned + ?, spent = spent + ?
WHERE id = ? RETURNING is_anonymous, balance, weight_override, weight
"""
SET_WEIGHT_OVERRIDE = """
UPDATE users SET weight_override = ? WHERE id = ? RETURNING is_anonymous, balance, weight_override, weight
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

    def keyless(self, addr: str | None) -> User | None:
        """The person a keyless caller at `addr` is, if they ever submitted (a read: an
        address that never submitted has no row and gets none here)."""
        if not addr:
            return None
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM users WHERE keyless_addr = ?", (addr,))
        return None if row is None else _user(row)

    def keyless_person(self, addr: str, weight: float) -> User:
        """The keyless caller at `addr` as a person of their own, made at their first write.
        Each address is one person (of `weight`, the anonymous weight) inside its network
        group; the shared `anonymous` user keeps the jobs of older releases."""
        for _ in range(3):
            found = self.keyless(addr)
            if found is not None:
                return found
            # The name is for listings; the address column is what finds the row.
            name = f"{ANONYMOUS}:{addr}"
            if self.by_name(name) is not None:
                name = f"{name}:{secrets.token_hex(4)}"
            try:
                with self.db.transaction() as tx:
                    tx.run(
                        "INSERT INTO users (name, is_anonymous, weight, keyless_addr, kind, created_at) "
                        "VALUES (?, 1, ?, ?, 'keyless', ?)",
                        (name, weight, addr, time.time()),
                    )
            except self.db.integrity_errors:
                continue  # another request of this address made it first
        found = self.keyless(addr)
        assert found is not None
        return found

    def group(self, *, user_id: int | None = None, key: str | None = None) -> FairGroup | None:
        """The group a user is in (while queued, or last), or the group named `key`."""
        with self.db.transaction(write=False) as tx:
            if user_id is not None:
                row = tx.one("SELECT g.id, g.key, g.weight, g.virtual_counter, g.queued_jobs FROM fair_groups g "
                             "JOIN users u ON u.group_id = g.id WHERE u.id = ?", (user_id,))
            else:
                row = tx.one("SELECT id, key, weight, virtual_counter, queued_jobs FROM fair_groups WHERE key = ?", (key,))
            if row is None:
                return None
            members = int(tx.scalar("SELECT COUNT(*) AS n FROM users WHERE group_id = ? AND queued_jobs > 0", (row["id"],)) or 0)
        return FairGroup(int(row["id"]), row["key"], float(row["weight"]), float(row["virtual_counter"]),
                         int(row["queued_jobs"]), members)

    def list(self) -> list[User]:
        with self.db.transaction(write=False) as tx:
            rows = tx.all(f"SELECT {_COLUMNS} FROM users ORDER BY id")
        return [_user(r) for r in rows]

    def group_keys(self) -> dict[int, str]:
        """The fair-share group each user was last placed in (fairness/groups.py keys)."""
        with self.db.transaction(write=False) as tx:
            rows = tx.all("SELECT u.id, g.key FROM users u JOIN fair_groups g ON g.id = u.group_id")
        return {int(r["id"]): r["key"] for r in rows}

    # -- writes inside another store's transaction ----------------------------------------

    @staticmethod
    def lock(tx: Transaction, user_id: int) -> None:
        """Hold the user's row until the transaction ends (PostgreSQL; SQLite's write
        transactions run one at a time anyway): submits of one user then count one after
        another."""
        if tx.one("SELECT id FROM users WHERE id = ? {for_update}", (user_id,)) is None:
            raise ValueError(f"no user with id {user_id}")

    @staticmethod
    def group_id(tx: Transaction, key: str, now: float | None = None) -> int:
        """The id of the group named `key` (fairness/groups.group_key), made if new."""
        found = tx.scalar(GROUP_OF_KEY, (key,))
        if found is None:
            tx.run(ENSURE_GROUP, (key, time.time() if now is None else now))
            found = tx.scalar(GROUP_OF_KEY, (key,))
        assert found is not None
        return int(found)

    @staticmethod
    def place(
        tx: Transaction, user_id: int, group_key: str,
        reads: Callable[[int], Sequence[tuple[str, Sequence[Any]]]] | None = None,
    ) -> Placement:
        """Lock the group the user's next job joins, then the user, always in this order
        (claims lock a group before charging its person, so nothing waits in a circle).

        A user with jobs queued stays in their group; one with nothing queued joins the group
        `group_key` names. Submits of one user, and caps of one group, then count one after
        another on PostgreSQL (SQLite's write transactions run one at a time anyway).

        The locks and every read the job's enqueue needs go in one batch (one round trip on
        PostgreSQL), with `reads(group_id)`, the caller's own reads under those locks (the
        queue caps'), whose results come back in `Placement.reads`."""
        for _ in range(5):
            row = tx.one(USER_PLACE, (group_key, user_id))
            if row is None:
                raise ValueError(f"no user with id {user_id}")
            staying = int(row["queued_jobs"]) > 0 and row["group_id"] is not None
            if staying:
                wanted = int(row["group_id"])
            elif row["keyed"] is not None:
                wanted = int(row["keyed"])
            else:
                wanted = UserStore.group_id(tx, group_key)
            results = tx.batch([
                (LOCK_GROUP, (wanted,)), (USER_QUEUE, (user_id,)),
                (LIFT_BOUNDS, ()), (GROUP_MEMBERS_MIN_COUNTER, (wanted,)),
                *(reads(wanted) if reads is not None else ()),
            ])
            group, user, bounds = results[0].one(), results[1].one(), results[2].one()
            assert group is not None and user is not None and bounds is not None
            queued = int(user["queued_jobs"]) > 0 and user["group_id"] is not None
            if (queued and int(user["group_id"]) == wanted) or (not queued and group["key"] == group_key):
                floors = {**bounds, "members": results[3].scalar()}
                return Placement(user_id, wanted, group["key"], group, user, floors, tuple(results[4:]))
            # the user's queue filled or drained between the two reads: place again
        raise RuntimeError(f"could not place user {user_id}'s job in a group")

    @staticmethod
    def enqueue(
        tx: Transaction, user_id: int, cost: float, *, group_key: str | None = None,
        network_weight: float = 1.0, placement: Placement | None = None,
    ) -> int:
        """A job of `cost` joins the user's queue; return its group's id.

        Without `placement` the job is placed here (`group_key` None: the user's own group).
        A group or person that had nothing queued is lifted to where the others are
        (shares.lifted_counter), so idle time cannot be banked at either level. A network
        group weighs `network_weight`; a person's own group weighs what the person weighs."""
        if placement is None:
            placement = UserStore.place(tx, user_id, group_key or f"{OWN}:{user_id}")
        for sql, params in UserStore.enqueue_statements(tx, placement, cost, network_weight=network_weight):
            tx.run(sql, params)
        return placement.group_id

    @staticmethod
    def enqueue_statements(
        tx: Transaction, placement: Placement, cost: float, *, network_weight: float = 1.0
    ) -> list[tuple[str, tuple]]:
        """`enqueue`'s writes, for the caller to run (in a batch with its own)."""
        weight = network_weight if is_network_group(placement.group_key) else None
        return UserStore._join_statements(
            tx, placement.user_id, placement.group_id, cost, weight, own_weight=weight is None,
            group=placement.group, user=placement.user, floors=placement.floors)

    @staticmethod
    def _join(
        tx: Transaction, user_id: int, group_id: int, cost: float, weight: float | None, *,
        own_weight: bool, lift: bool = True,
    ) -> int:
        for sql, params in UserStore._join_statements(tx, user_id, group_id, cost, weight,
                                                       own_weight=own_weight, lift=lift):
            tx.run(sql, params)
        return group_id

    @staticmethod
    def _join_statements(
        tx: Transaction, user_id: int, group_id: int, cost: float, weight: float | None, *,
        own_weight: bool, lift: bool = True, group: dict | None = None, user: dict | None = None,
        floors: dict | None = None,
    ) -> list[tuple[str, tuple]]:
        """The writes that queue a job of `cost` for the user in the group. `group`, `user` and
        `floors`: the rows and lift bounds as read under their locks in this transaction, if the
        caller has them (UserStore.place); read here otherwise."""
        if group is None:
            group = tx.one("SELECT virtual_counter, queued_jobs, member_max FROM fair_groups WHERE id = ?", (group_id,))
        if user is None:
            user = tx.one(USER_QUEUE, (user_id,))
        if group is None or user is None:
            raise ValueError(f"no user {user_id} or group {group_id}")
        group_counter = float(group["virtual_counter"])
        if lift and int(group["queued_jobs"]) == 0:
            bounds = floors if floors is not None else tx.one(LIFT_BOUNDS)
            assert bounds is not None
            group_counter = shares.lifted_counter(group_counter, bounds["lowest"], bounds["highest"])
        counter = float(user["virtual_counter"])
        if lift and int(user["queued_jobs"]) == 0:
            floor = floors["members"] if floors is not None else tx.scalar(GROUP_MEMBERS_MIN_COUNTER, (group_id,))
            floor = float(group["member_max"]) if floor is None else float(floor)
            # Counters of different groups are not comparable: a person new to the group
            # starts at its floor; one coming back to it cannot go below where they were.
            same = user["group_id"] is not None and int(user["group_id"]) == group_id
            counter = max(counter, floor) if same else floor
        if own_weight:
            weight = float(user["weight"])
        return [(ENQUEUE_JOB, (cost, counter, group_id, user_id)),
                (ENQUEUE_GROUP_JOB, (cost, group_counter, weight, counter, counter, group_id))]

    @staticmethod
    def charge(tx: Transaction, user_id: int, group_id: int, cost: float, charged: float, group_charged: float) -> None:
        """A queued job of `cost` was claimed: it leaves the queue and both counters advance."""
        for sql, params in UserStore.charge_statements(user_id, group_id, cost, charged, group_charged):
            tx.run(sql, params)

    @staticmethod
    def charge_statements(
        user_id: int, group_id: int, cost: float, charged: float, group_charged: float
    ) -> list[tuple[str, tuple]]:
        """`charge`'s two writes, in this order, for the caller to run (in a batch with its own)."""
        return [(DEQUEUE_JOB, (charged, cost, user_id)),
                (DEQUEUE_GROUP_JOB, (group_charged, cost, user_id, user_id, group_id))]

    @staticmethod
    def dequeue(tx: Transaction, user_id: int, group_id: int, cost: float) -> None:
        """A queued job of `cost` was cancelled before anyone served it: nothing is charged."""
        UserStore.charge(tx, user_id, group_id, cost, 0.0, 0.0)

    @staticmethod
    def refund(
        tx: Transaction, user_id: int, group_id: int | None, cost: float, charged: float, group_charged: float
    ) -> int:
        """A claimed job went back to the queue: the owner paid for a run that did not happen.
        The charges go back to the person and to the group that was charged (`group_id`);
        the job then queues in the user's group, which is another one if the user queued
        elsewhere meanwhile. Returns the group it is queued in now."""
        user = tx.one("SELECT group_id, queued_jobs FROM users WHERE id = ?", (user_id,))
        if user is None:
            raise ValueError(f"no user with id {user_id}")
        if group_id is None:  # claimed before groups existed
            group_id = UserStore.group_id(tx, f"{OWN}:{user_id}")
        target = int(user["group_id"]) if int(user["queued_jobs"]) > 0 and user["group_id"] is not None else group_id
        for gid in sorted({group_id, target}):  # one lock order for two groups
            tx.one(LOCK_GROUP, (gid,))
        tx.run(UNCHARGE_GROUP, (group_charged, group_id))
        if user["group_id"] is not None and int(user["group_id"]) == group_id:
            tx.run(UNCHARGE_USER, (charged, user_id))
        # The group keeps its weight (set when its people queue). Back in the group it was
        # charged in, the job takes its place as if never claimed; in another group (the user
        # queued there meanwhile) it joins like a new job.
        return UserStore._join(tx, user_id, target, cost, None, own_weight=False, lift=target != group_id)

    @staticmethod
    def add_to_totals(tx: Transaction, user_id: int, amount: float, *, undo_spend: bool = False) -> dict | None:
        """Move the running totals by one ledger row; the row the weight is computed from
        (None: no such user). `undo_spend`: the row gives back spending (a refund)."""
        return tx.one(*UserStore.totals_statement(user_id, amount, undo_spend=undo_spend))

    @staticmethod
    def totals_statement(user_id: int, amount: float, *, undo_spend: bool = False) -> tuple[str, tuple]:
        if undo_spend:
            return ADD_TO_TOTALS, (amount, 0.0, -amount, user_id)
        return ADD_TO_TOTALS, (amount, max(0.0, amount), max(0.0, -amount), user_id)

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
