"""Operator tools in the database: bans (users, address ranges), offences with escalating
timeouts, the audit log of admin actions, and acceptance of the server's terms.

Kept in the database, not in memory, so that a ban or a timeout holds across restarts and
across servers sharing one PostgreSQL database.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kakumei.fairness.limits import TimeoutPolicy, timeout_seconds
from kakumei.store.db import Database, Transaction
from kakumei.store.users import UserStore

USER = "user"
IP = "ip"
# (table, key column) of each kind of offender.
_TABLES = {IP: ("ip_offences", "addr"), USER: ("user_offences", "user_id")}


@dataclass(frozen=True)
class Ban:
    id: int
    kind: str
    target: str
    reason: str
    created_by: str
    created_at: float
    expires_at: float | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    created_at: float


def parse_network(target: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR range, or ValueError with a sentence."""
    try:
        return ipaddress.ip_network(target.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{target!r} is not an IP address or range such as 203.0.113.0/24") from None


def _ban(row: dict) -> Ban:
    return Ban(int(row["id"]), row["kind"], row["target"], row["reason"], row["created_by"],
               float(row["created_at"]), row["expires_at"])


_ACTIVE = "lifted_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
_BAN_COLUMNS = "id, kind, target, reason, created_by, created_at, expires_at"


class OffenceStore(Protocol):
    """Where offences and timeouts are counted: `kind` is USER or IP, `offender` a user id or
    an address."""

    def record(self, kind: str, offender: str, reason: str, now: float, window: float,
               timeout_for: Callable[[int], float]) -> float:
        """Count one offence (the count starts again after `window` seconds without one) and
        block the offender for `timeout_for(count)` seconds from `now`, never shortening a
        timeout it is already in; the blocked-until time (in the past: not blocked)."""
        ...

    def blocked(self, kind: str, offender: str, now: float) -> tuple[float, str] | None:
        """(until, last reason) while the offender is in a timeout."""
        ...

    def forget(self, kind: str, offender: str, tx: Transaction) -> bool:
        """Forget the offender's offences; whether there were any. `tx`: the transaction
        that audits it (the database store deletes in it)."""
        ...


class DatabaseOffences:
    """Offences in the database (ip_offences by address, user_offences by user id)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, kind: str, offender: str, reason: str, now: float, window: float,
               timeout_for: Callable[[int], float]) -> float:
        table, column = _TABLES[kind]
        key = _key(kind, offender)
        with self.db.transaction() as tx:
            # The row first, so that two servers counting a first offence at once take turns
            # on it (a SELECT ... FOR UPDATE of no row locks nothing).
            tx.execute(f"INSERT INTO {table} ({column}, offences, first_at, last_at, blocked_until, last_reason) "
                       f"VALUES (?, 0, ?, ?, 0, ?) ON CONFLICT ({column}) DO NOTHING", (key, now, now, reason))
            row = tx.one(f"SELECT offences, last_at, blocked_until FROM {table} WHERE {column} = ? {{for_update}}",
                         (key,))
            assert row is not None
            fresh = int(row["offences"]) == 0 or now - float(row["last_at"]) > window
            offences = 1 if fresh else int(row["offences"]) + 1
            timeout = timeout_for(offences)
            previous = float(row["blocked_until"])
            blocked_until = max(previous, now + timeout) if timeout else previous
            tx.run(f"UPDATE {table} SET offences = ?, last_at = ?, blocked_until = ?, last_reason = ? "
                   f"WHERE {column} = ?", (offences, now, blocked_until, reason, key))
        return blocked_until

    def blocked(self, kind: str, offender: str, now: float) -> tuple[float, str] | None:
        table, column = _TABLES[kind]
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT blocked_until, last_reason FROM {table} WHERE {column} = ? AND blocked_until > ?",
                         (_key(kind, offender), now))
        return None if row is None else (float(row["blocked_until"]), row["last_reason"])

    def forget(self, kind: str, offender: str, tx: Transaction) -> bool:
        table, column = _TABLES[kind]
        return bool(tx.run(f"DELETE FROM {table} WHERE {column} = ?", (_key(kind, offender),)))


def _address(addr: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not addr:
        return None
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        return None


def _matching(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, rows: list[dict[str, Any]]) -> Ban | None:
    """The first of the active ip ban `rows` whose range holds `ip`."""
    for row in rows:
        if ip in ipaddress.ip_network(row["target"], strict=False):
            return _ban(row)
    return None


def _key(kind: str, offender: str) -> str | int:
    return int(offender) if kind == USER else offender


class Moderation:
    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time,
                 offences: OffenceStore | None = None) -> None:
        self.db = db
        self.clock = clock
        self.offences: OffenceStore = offences or DatabaseOffences(db)

    # -- audit --------------------------------------------------------------------------

    def audit(self, tx: Transaction, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        """Record an admin action inside the transaction that performs it."""
        tx.execute(
            "INSERT INTO audit_log (actor, action, target, detail, created_at) VALUES (?, ?, ?, ?, ?)",
            (actor, action, target, json.dumps(detail, sort_keys=True), self.clock()),
        )

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        with self.db.transaction(write=False) as tx:
            rows = tx.all("SELECT id, actor, action, target, detail, created_at FROM audit_log "
                          "ORDER BY id DESC LIMIT ?", (limit,))
        return [AuditEntry(int(r["id"]), r["actor"], r["action"], r["target"], json.loads(r["detail"]),
                           float(r["created_at"])) for r in rows]

    # -- bans ---------------------------------------------------------------------------

    def ban(self, kind: str, target: str, reason: str, actor: str, *, seconds: float | None = None) -> Ban:
        """Ban a user (target = user id) or an address range; `seconds` None: until lifted."""
        if kind == IP:
            target = str(parse_network(target))
        elif kind != USER:
            raise ValueError(f"unknown ban kind {kind!r}; use 'user' or 'ip'")
        if not reason.strip():
            raise ValueError("say why: a ban needs a reason")
        now = self.clock()
        expires = None if seconds is None else now + seconds
        with self.db.transaction() as tx:
            row = tx.one(
                f"INSERT INTO bans (kind, target, reason, created_by, created_at, expires_at) "
                f"VALUES (?, ?, ?, ?, ?, ?) RETURNING {_BAN_COLUMNS}",
                (kind, target, reason.strip(), actor, now, expires),
            )
            self.audit(tx, actor, f"ban-{kind}", target, {"reason": reason.strip(), "expires_at": expires})
        assert row is not None
        return _ban(row)

    def lift(self, kind: str, target: str, actor: str) -> int:
        """Lift every active ban of `target`; return how many."""
        if kind == IP:
            target = str(parse_network(target))
        now = self.clock()
        with self.db.transaction() as tx:
            n = tx.run(f"UPDATE bans SET lifted_at = ? WHERE kind = ? AND target = ? AND {_ACTIVE}",
                       (now, kind, target, now))
            if n:
                self.audit(tx, actor, f"unban-{kind}", target, {"lifted": n})
        return n

    def active_bans(self) -> list[Ban]:
        with self.db.transaction(write=False) as tx:
            rows = tx.all(f"SELECT {_BAN_COLUMNS} FROM bans WHERE {_ACTIVE} ORDER BY id", (self.clock(),))
        return [_ban(r) for r in rows]

    def user_ban(self, user_id: int) -> Ban | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_BAN_COLUMNS} FROM bans WHERE kind = 'user' AND target = ? AND {_ACTIVE} "
                         "ORDER BY id LIMIT 1", (str(user_id), self.clock()))
        return None if row is None else _ban(row)

    def ban_of(self, addr: str | None, user_id: int | None) -> Ban | None:
        """`ip_ban(addr)`, else `user_ban(user_id)` (None: no account to look at), read in one
        round trip."""
        ip = _address(addr)
        now = self.clock()
        statements: list[tuple[str, tuple[Any, ...]]] = []
        if ip is not None:
            statements.append((f"SELECT {_BAN_COLUMNS} FROM bans WHERE kind = 'ip' AND {_ACTIVE}", (now,)))
        if user_id is not None:
            statements.append((f"SELECT {_BAN_COLUMNS} FROM bans WHERE kind = 'user' AND target = ? AND {_ACTIVE} "
                               "ORDER BY id LIMIT 1", (str(user_id), now)))
        if not statements:
            return None
        with self.db.transaction(write=False) as tx:
            results = tx.batch(statements)
        if ip is not None:
            ban = _matching(ip, results.pop(0).rows)
            if ban is not None:
                return ban
        row = results[0].one() if results else None
        return None if row is None else _ban(row)

    def ip_ban(self, addr: str | None) -> Ban | None:
        """The active ban whose range holds `addr`, if any. Range bans are few; matching
        them in Python keeps the SQL the same on both databases."""
        ip = _address(addr)
        if ip is None:
            return None
        with self.db.transaction(write=False) as tx:
            rows = tx.all(f"SELECT {_BAN_COLUMNS} FROM bans WHERE kind = 'ip' AND {_ACTIVE}", (self.clock(),))
        return _matching(ip, rows)

    # -- offences and timeouts ----------------------------------------------------------
    # The offender is a registered user (by id) or, for keyless callers, an address: a
    # timeout stops whoever broke the rules, not everyone who shares their address. Counted
    # in `self.offences`: the database (DatabaseOffences) or Redis (store/redis_limits.py).

    def offence(self, addr: str | None, reason: str, policy: TimeoutPolicy) -> float:
        """Count a broken rule against the address `addr`; return until when it is blocked (0: not)."""
        return self._offence(IP, addr, reason, policy) if addr else 0.0

    def user_offence(self, user_id: int, reason: str, policy: TimeoutPolicy) -> float:
        """Count a broken rule against a registered user; return until when they are blocked (0: not)."""
        return self._offence(USER, str(user_id), reason, policy)

    def _offence(self, kind: str, offender: str, reason: str, policy: TimeoutPolicy) -> float:
        now = self.clock()
        blocked_until = self.offences.record(kind, offender, reason, now, policy.window,
                                             lambda offences: timeout_seconds(policy, offences))
        return blocked_until if blocked_until > now else 0.0

    def blocked_until(self, addr: str | None) -> tuple[float, str] | None:
        """(until, last reason) while the address `addr` is in a timeout, else None."""
        return self.offences.blocked(IP, addr, self.clock()) if addr else None

    def user_blocked_until(self, user_id: int) -> tuple[float, str] | None:
        """(until, last reason) while a registered user is in a timeout, else None."""
        return self.offences.blocked(USER, str(user_id), self.clock())

    def pardon(self, addr: str, actor: str) -> bool:
        """Forget an address's offences (and end its timeout)."""
        with self.db.transaction() as tx:
            forgotten = self.offences.forget(IP, addr, tx)
            if forgotten:
                self.audit(tx, actor, "pardon-ip", addr, {})
        return forgotten

    def pardon_user(self, user_id: int, name: str, actor: str) -> bool:
        """Forget a registered user's offences (and end their timeout)."""
        with self.db.transaction() as tx:
            forgotten = self.offences.forget(USER, str(user_id), tx)
            if forgotten:
                self.audit(tx, actor, "pardon-user", name, {})
        return forgotten

    # -- terms --------------------------------------------------------------------------

    def accept_terms(self, user_id: int, client_addr: str | None, version: str) -> None:
        """Record acceptance once (a repeat changes nothing)."""
        with self.db.transaction() as tx:
            if tx.one("SELECT 1 AS x FROM terms_acceptance WHERE user_id = ? AND client_addr = ? AND version = ?",
                      (user_id, client_addr or "", version)) is None:
                tx.execute("INSERT INTO terms_acceptance (user_id, client_addr, version, accepted_at) "
                           "VALUES (?, ?, ?, ?)", (user_id, client_addr or "", version, self.clock()))

    def accepted_terms(self, user_id: int, client_addr: str | None, version: str) -> bool:
        with self.db.transaction(write=False) as tx:
            return tx.one("SELECT 1 AS x FROM terms_acceptance WHERE user_id = ? AND client_addr = ? AND version = ?",
                          (user_id, client_addr or "", version)) is not None

    # -- admin changes to users (each audited in its own transaction) --------------------

    def grant(self, ledger: Any, user_id: int, name: str, amount: float, note: str, actor: str) -> None:
        """Give (or, negative, take back) credit through the ledger."""
        with self.db.transaction() as tx:
            ledger.add(user_id, amount, "grant", note=note or None, conn=tx)
            self.audit(tx, actor, "grant", name, {"amount": amount, "note": note})

    def set_weight(self, ledger: Any, user_id: int, name: str, weight: float | None, actor: str) -> None:
        """Set an admin weight, or (None) let merit decide again."""
        if weight is not None and not weight > 0:
            raise ValueError(f"weight must be above 0, got {weight}")
        with self.db.transaction() as tx:
            row = UserStore.set_weight_override(tx, user_id, weight)
            if row is None:
                raise ValueError(f"no user with id {user_id}")
            ledger.apply_weight(tx, user_id, row)
            self.audit(tx, actor, "weight", name, {"weight": weight})

    def set_admin(self, user_id: int, name: str, admin: bool, actor: str) -> None:
        with self.db.transaction() as tx:
            UserStore.set_admin(tx, user_id, admin)
            self.audit(tx, actor, "admin" if admin else "revoke-admin", name, {})
