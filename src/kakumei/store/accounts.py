"""Accounts: API keys (many per user, each revocable), passwords, invite codes, guests, and
the hourly per-network counts of sign-ups, guest sessions and failed sign-ins.

Writers: `AccountStore` is the only code that writes `api_keys` (except the first key of a
user made by the operator, which `UserStore.add` writes in the same transaction as the
user), `invites` and `account_events`, and it makes and changes the users that sign up
or come as guests. A sign-up is one transaction: the user, its key, the invite's use and the
count, or nothing. Passwords arrive here already hashed (server/passwords.py); this module
never sees one in the clear.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kakumei.store.db import Database, Transaction
from kakumei.store.users import _COLUMNS, KEY_PREFIX, User, _user, hash_key

log = logging.getLogger(__name__)

INVITE_PREFIX = "kki_"
GUEST_PREFIX = "guest-"
HOUR = 3600.0

# Kinds of users (users.kind) and of counted events (account_events.kind).
OPERATOR, ACCOUNT, GUEST = "operator", "account", "guest"
FAILED_SIGN_IN = "failed-sign-in"
# The label of keys that sign-in mints: the first to go when a user is at the key limit.
SIGN_IN = "sign-in"

# On PostgreSQL sign-ups and guest sessions take turns on this advisory lock, so the count
# per network and the case-insensitive name check cannot both pass for two at once. (SQLite's
# write transactions already run one at a time.) Namespace and key, apart from the others.
_SIGNUP_LOCK = "SELECT pg_advisory_xact_lock(7363003, 1)"

INSERT_KEY = "INSERT INTO api_keys (user_id, key_hash, label, created_at, kind) VALUES (?, ?, ?, ?, ?) RETURNING id"
# Key kinds (migration 0013): 'horde' keys have the 22 characters of an AI Horde key, which
# horde_sdk insists on; both kinds authenticate the same user everywhere.
API_KEY, HORDE_KEY = "api", "horde"
LIVE_KEYS = "SELECT COUNT(*) AS n FROM api_keys WHERE user_id = ? AND revoked_at IS NULL"
# Events of one kind from one network within the window: how many, and when the oldest
# leaves it (which is when the next one is allowed).
RECENT_EVENTS = """
SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM account_events
WHERE kind = ? AND network = ? AND created_at > ?
"""


class NameTaken(ValueError):
    pass


class NotAGuest(ValueError):
    """A sign-up that names a user to turn into an account, who is not (or no longer) a guest."""


class TooManyKeys(ValueError):
    pass


class LastKey(ValueError):
    pass


class TooMany(ValueError):
    """More events of a kind from one network in the last hour than allowed."""

    def __init__(self, kind: str, limit: int, retry_after: float) -> None:
        super().__init__(f"at most {limit} of {kind} an hour from one network")
        self.kind = kind
        self.limit = limit
        self.retry_after = retry_after


InviteProblem = Literal["missing", "unknown", "used", "expired"]


class InviteRefused(ValueError):
    def __init__(self, problem: InviteProblem, expires_at: float | None = None) -> None:
        super().__init__(problem)
        self.problem: InviteProblem = problem
        self.expires_at = expires_at


@dataclass(frozen=True)
class ApiKey:
    id: int
    user_id: int
    label: str
    created_at: float
    last_used_at: float | None
    key_hash: str
    kind: str = API_KEY


@dataclass(frozen=True)
class Invite:
    id: int
    uses_left: int
    expires_at: float | None
    created_by: str
    created_at: float


def _api_key(row: dict) -> ApiKey:
    return ApiKey(
        id=int(row["id"]), user_id=int(row["user_id"]), label=row["label"], created_at=float(row["created_at"]),
        last_used_at=None if row["last_used_at"] is None else float(row["last_used_at"]), key_hash=row["key_hash"],
        kind=row["kind"],
    )


def new_key(kind: str = API_KEY) -> str:
    if kind == HORDE_KEY:
        # 16 random bytes are 22 URL-safe characters, the length of an AI Horde key.
        return secrets.token_urlsafe(16)
    return KEY_PREFIX + secrets.token_urlsafe(32)


class AccountStore:
    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    # -- keys -----------------------------------------------------------------------------

    def keys(self, user_id: int) -> list[ApiKey]:
        """The user's keys that still work, oldest first."""
        with self.db.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT id, user_id, label, created_at, last_used_at, key_hash, kind FROM api_keys "
                "WHERE user_id = ? AND revoked_at IS NULL ORDER BY id",
                (user_id,),
            )
        return [_api_key(r) for r in rows]

    def add_key(self, user_id: int, label: str, *, max_keys: int, kind: str = API_KEY) -> tuple[ApiKey, str]:
        """A new key for the user (shown once, stored hashed); TooManyKeys at `max_keys`.
        `kind` HORDE_KEY makes a key of the AI Horde's shape."""
        with self.db.transaction() as tx:
            tx.one("SELECT id FROM users WHERE id = ? {for_update}", (user_id,))
            if int(tx.scalar(LIVE_KEYS, (user_id,))) >= max_keys:
                raise TooManyKeys(f"you hold {max_keys} keys, the most this server allows")
            key_id, key = self._insert_key(tx, user_id, label, kind)
        return ApiKey(key_id, user_id, label, self.clock(), None, hash_key(key), kind), key

    def revoke_key(self, user_id: int, key_id: int) -> bool:
        """Revoke one of the user's keys; False if they hold no such key (any more). LastKey
        for the last key of an operator's user: without a password they could never get
        another (a guest may end its session; an account signs in again)."""
        with self.db.transaction() as tx:
            user = tx.one("SELECT kind, password_hash FROM users WHERE id = ? {for_update}", (user_id,))
            if user is None:
                return False
            held = tx.one("SELECT id FROM api_keys WHERE id = ? AND user_id = ? AND revoked_at IS NULL", (key_id, user_id))
            if held is None:
                return False
            if user["kind"] != GUEST and user["password_hash"] is None and int(tx.scalar(LIVE_KEYS, (user_id,))) <= 1:
                raise LastKey("this is your last key, and without a password you could not sign in again")
            tx.run("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (self.clock(), key_id))
        return True

    def touch_keys(self, used: dict[str, float]) -> None:
        """Record when keys (by hash) were last used."""
        if not used:
            return
        with self.db.transaction() as tx:
            for key_hash, at in used.items():
                tx.run(
                    "UPDATE api_keys SET last_used_at = ? WHERE key_hash = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                    (at, key_hash, at),
                )

    def _insert_key(self, tx: Transaction, user_id: int, label: str, kind: str = API_KEY) -> tuple[int, str]:
        key = new_key(kind)
        row = tx.one(INSERT_KEY, (user_id, hash_key(key), label, self.clock(), kind))
        assert row is not None
        return int(row["id"]), key

    def _session_key(self, tx: Transaction, user_id: int, label: str, max_keys: int) -> str:
        """A key minted by sign-in or sign-up. At the limit, the user's oldest sign-in key
        gives way (signing in again must not lock anyone out); with none, TooManyKeys."""
        if int(tx.scalar(LIVE_KEYS, (user_id,))) >= max_keys:
            oldest = tx.scalar(
                "SELECT MIN(id) AS id FROM api_keys WHERE user_id = ? AND label = ? AND revoked_at IS NULL",
                (user_id, SIGN_IN),
            )
            if oldest is None:
                raise TooManyKeys(f"you hold {max_keys} keys, the most this server allows")
            tx.run("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (self.clock(), oldest))
        return self._insert_key(tx, user_id, label)[1]

    # -- users of kinds ---------------------------------------------------------------------

    def kind_of(self, user_id: int) -> str | None:
        with self.db.transaction(write=False) as tx:
            return tx.scalar("SELECT kind FROM users WHERE id = ?", (user_id,))

    def credentials(self, name: str) -> tuple[int, str] | None:
        """(user id, password hash) of the user with a password named `name` (without case;
        an exact match first, as users the operator made may differ only in case)."""
        with self.db.transaction(write=False) as tx:
            row = tx.one(
                "SELECT id, password_hash FROM users WHERE LOWER(name) = LOWER(?) AND password_hash IS NOT NULL "
                "ORDER BY CASE WHEN name = ? THEN 0 ELSE 1 END, id LIMIT 1",
                (name, name),
            )
        return None if row is None else (int(row["id"]), row["password_hash"])

    def sign_in(self, user_id: int, *, max_keys: int) -> str:
        """A new "sign-in" key for a user whose password was checked."""
        with self.db.transaction() as tx:
            tx.one("SELECT id FROM users WHERE id = ? {for_update}", (user_id,))
            return self._session_key(tx, user_id, SIGN_IN, max_keys)

    def sign_up(
        self,
        name: str,
        password_hash: str,
        network: str,
        *,
        per_hour: int,
        max_keys: int,
        invite: str | None = None,
        need_invite: bool = False,
        guest_id: int | None = None,
    ) -> tuple[User, str]:
        """Make an account (or turn the guest `guest_id` into one, keeping its id); return it
        and its new key. All or nothing: TooMany, NameTaken, InviteRefused or NotAGuest leave
        no user, no key, no used invite and no count behind."""
        now = self.clock()
        with self.db.transaction() as tx:
            self._lock(tx)
            self._hold_limit(tx, ACCOUNT, network, per_hour, now)
            if tx.one("SELECT id FROM users WHERE LOWER(name) = LOWER(?)", (name,)) is not None:
                raise NameTaken(f"the name {name!r} is taken")
            if need_invite:
                self._spend_invite(tx, invite, now)
            if guest_id is None:
                row = tx.one(
                    f"INSERT INTO users (name, password_hash, kind, signup_network, weight, created_at) "
                    f"VALUES (?, ?, ?, ?, 1.0, ?) RETURNING {_COLUMNS}",
                    (name, password_hash, ACCOUNT, network, now),
                )
            else:
                row = tx.one(
                    f"UPDATE users SET name = ?, password_hash = ?, kind = ?, signup_network = ? "
                    f"WHERE id = ? AND kind = ? RETURNING {_COLUMNS}",
                    (name, password_hash, ACCOUNT, network, guest_id, GUEST),
                )
                if row is None:
                    raise NotAGuest("only a guest can turn into an account")
            assert row is not None
            user = _user(row)
            key = self._session_key(tx, user.id, "sign-up", max_keys)
            self._count(tx, ACCOUNT, network, now)
        return user, key

    def add_guest(self, network: str, *, per_hour: int) -> tuple[User, str]:
        """A guest user of its own, named guest-<random>, with a key; TooMany past
        `per_hour` guests from the network in the last hour."""
        now = self.clock()
        with self.db.transaction() as tx:
            self._lock(tx)
            self._hold_limit(tx, GUEST, network, per_hour, now)
            for _ in range(5):
                name = GUEST_PREFIX + secrets.token_hex(5)
                if tx.one("SELECT id FROM users WHERE LOWER(name) = LOWER(?)", (name,)) is None:
                    break
            else:  # 5 collisions in 2^40 names: something is wrong with the randomness
                raise RuntimeError("could not choose a free guest name")
            row = tx.one(
                f"INSERT INTO users (name, kind, signup_network, weight, created_at) "
                f"VALUES (?, ?, ?, 1.0, ?) RETURNING {_COLUMNS}",
                (name, GUEST, network, now),
            )
            assert row is not None
            user = _user(row)
            key = self._insert_key(tx, user.id, GUEST)[1]
            self._count(tx, GUEST, network, now)
        return user, key

    # -- failed sign-ins ------------------------------------------------------------------

    def failed_sign_in(self, network: str) -> None:
        now = self.clock()
        with self.db.transaction() as tx:
            self._count(tx, FAILED_SIGN_IN, network, now)

    def check_limit(self, kind: str, network: str, per_hour: int) -> None:
        """TooMany when `network` has had `per_hour` events of `kind` in the last hour."""
        with self.db.transaction(write=False) as tx:
            self._hold_limit(tx, kind, network, per_hour, self.clock())

    # -- invites --------------------------------------------------------------------------

    def add_invite(self, *, uses: int, hours: float | None, created_by: str) -> tuple[Invite, str]:
        """A new invite code (shown once, stored hashed) for `uses` sign-ups within `hours`
        (None: no end)."""
        if uses < 1:
            raise ValueError(f"an invite needs at least 1 use, got {uses}")
        if hours is not None and not hours > 0:
            raise ValueError(f"an invite needs more than 0 hours, got {hours}")
        code = INVITE_PREFIX + secrets.token_urlsafe(18)
        now = self.clock()
        expires = None if hours is None else now + hours * HOUR
        with self.db.transaction() as tx:
            row = tx.one(
                "INSERT INTO invites (code_hash, uses_left, expires_at, created_by, created_at) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (hash_key(code), uses, expires, created_by, now),
            )
        assert row is not None
        return Invite(int(row["id"]), uses, expires, created_by, now), code

    def invite(self, code: str) -> Invite | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(
                "SELECT id, uses_left, expires_at, created_by, created_at FROM invites WHERE code_hash = ?",
                (hash_key(code),),
            )
        if row is None:
            return None
        return Invite(int(row["id"]), int(row["uses_left"]), row["expires_at"], row["created_by"], float(row["created_at"]))

    def _spend_invite(self, tx: Transaction, code: str | None, now: float) -> None:
        if not code:
            raise InviteRefused("missing")
        row = tx.one("SELECT id, uses_left, expires_at FROM invites WHERE code_hash = ? {for_update}", (hash_key(code),))
        if row is None:
            raise InviteRefused("unknown")
        if row["expires_at"] is not None and float(row["expires_at"]) <= now:
            raise InviteRefused("expired", float(row["expires_at"]))
        if int(row["uses_left"]) <= 0:
            raise InviteRefused("used")
        tx.run("UPDATE invites SET uses_left = uses_left - 1 WHERE id = ?", (row["id"],))

    # -- counts per network -----------------------------------------------------------------

    def _lock(self, tx: Transaction) -> None:
        if tx.dialect == "postgresql":
            tx.execute(_SIGNUP_LOCK)

    @staticmethod
    def _hold_limit(tx: Transaction, kind: str, network: str, per_hour: int, now: float) -> None:
        row = tx.one(RECENT_EVENTS, (kind, network, now - HOUR))
        assert row is not None
        if int(row["n"]) >= per_hour:
            wait = float(row["oldest"]) + HOUR - now
            raise TooMany(kind, per_hour, max(1.0, math.ceil(wait)))

    @staticmethod
    def _count(tx: Transaction, kind: str, network: str, now: float) -> None:
        # What has left the window is never read again.
        tx.run("DELETE FROM account_events WHERE kind = ? AND network = ? AND created_at <= ?", (kind, network, now - HOUR))
        tx.run("INSERT INTO account_events (kind, network, created_at) VALUES (?, ?, ?)", (kind, network, now))


class KeyUse:
    """When keys were last used, written at most once per `every` seconds per process: an
    API call costs no write of its own, and last_used_at is right to about that much."""

    def __init__(self, accounts: AccountStore, *, every: float = 60.0, most: int = 10_000) -> None:
        self.accounts = accounts
        self.every = every
        self.most = most
        self._pending: dict[str, float] = {}
        self._written_at = accounts.clock()
        self._lock = threading.Lock()

    def note(self, key_hash: str) -> None:
        now = self.accounts.clock()
        with self._lock:
            if len(self._pending) < self.most or key_hash in self._pending:
                self._pending[key_hash] = now
            if now - self._written_at < self.every:
                return
            pending, self._pending, self._written_at = self._pending, {}, now
        try:
            self.accounts.touch_keys(pending)
        except Exception:  # a busy or lost database: the times are a hint, the request goes on
            log.warning("could not record when %d API key(s) were last used", len(pending), exc_info=True)
