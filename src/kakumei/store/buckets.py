"""Rate-limit buckets and open-stream counts kept in the database (migration 0012), so that a
key's limits hold however many servers it talks to.

`SharedBuckets` answers as `fairness.limits.TokenBuckets` does (the same rules, the same
methods) and keeps its buckets in a `BucketStore`: the database (`DatabaseBuckets`), where each
bucket is a row updated by one atomic statement: the refill, the take and whether it was
granted are computed by the database under the row's lock, so two servers taking at once
cannot both take the last token; or Redis (setting `redis_url`, store/redis_limits.py), where
one Lua script does the same. `SharedSlots` answers as `Slots`: a place is a
row with an expiry that its holder renews while it holds it, so a server that dies frees its
places when they expire.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from kakumei.store.db import Database

log = logging.getLogger(__name__)

# The bucket's level now: refilled since `at`, at most `burst` (params: burst, now, rate).
_LEVEL = "{least}(?, b.tokens + {greatest}(0, ? - b.at) * ?)"

TAKE = f"""
INSERT INTO rate_buckets AS b (scope, bucket_key, tokens, at, granted) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (scope, bucket_key) DO UPDATE SET
    tokens = CASE WHEN {_LEVEL} >= 1 THEN {_LEVEL} - 1 ELSE {_LEVEL} END,
    at = {{greatest}}(b.at, excluded.at),
    granted = {_LEVEL} >= 1
RETURNING tokens, granted
"""

GIVE_BACK = f"""
UPDATE rate_buckets AS b SET tokens = {{least}}(?, {_LEVEL} + 1), at = {{greatest}}(b.at, ?)
WHERE scope = ? AND bucket_key = ?
"""

# A refusal within one wait keeps whether ignoring it was counted; a later one starts afresh.
TOLD = """
INSERT INTO rate_told AS t (scope, caller, wait_until, counted) VALUES (?, ?, ?, ?)
ON CONFLICT (scope, caller) DO UPDATE SET
    counted = t.counted AND t.wait_until > ?,
    wait_until = excluded.wait_until
"""

COUNT_OFFENCE = "UPDATE rate_told SET counted = ? WHERE scope = ? AND caller = ? AND wait_until > ? AND counted = ?"

# Rows that say nothing any more: buckets full again, waits over.
PRUNE_BUCKETS = "DELETE FROM rate_buckets WHERE scope = ? AND at < ?"
PRUNE_TOLD = "DELETE FROM rate_told WHERE scope = ? AND wait_until < ?"


class DatabaseBuckets:
    """Where `SharedBuckets` keeps its buckets on a database (migration 0012's tables)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def take(self, scope: str, key: str, caller: str, now: float, burst: float, rate: float) -> tuple[float, bool]:
        level = (burst, now, rate)
        with self.db.transaction() as tx:
            row = tx.one(TAKE, (scope, key, burst - 1, now, True, *level, *level, *level, *level))
            assert row is not None
            tokens, granted = float(row["tokens"]), bool(row["granted"])
            if not granted:
                tx.execute(TOLD, (scope, caller, now + (1.0 - tokens) / rate, False, now))
        return tokens, granted

    def told_until(self, scope: str, caller: str) -> float | None:
        with self.db.transaction(write=False) as tx:
            wait_until = tx.scalar("SELECT wait_until FROM rate_told WHERE scope = ? AND caller = ?", (scope, caller))
        return None if wait_until is None else float(wait_until)

    def count_offence(self, scope: str, caller: str, now: float) -> bool:
        with self.db.transaction() as tx:  # one round trip: the COMMIT goes with the statement
            return tx.batch([(COUNT_OFFENCE, (True, scope, caller, now, False))], last=True)[0].rowcount == 1

    def give_back(self, scope: str, key: str, now: float, burst: float, rate: float) -> None:
        with self.db.transaction() as tx:
            tx.batch([(GIVE_BACK, (burst, burst, now, rate, now, scope, key))], last=True)

    def prune(self, scope: str, now: float, burst: float, rate: float) -> None:
        full_since = now - burst / rate if rate > 0 else now
        with self.db.transaction() as tx:
            tx.run(PRUNE_BUCKETS, (scope, full_since))
            tx.run(PRUNE_TOLD, (scope, now))


class BucketStore(Protocol):
    """Where shared buckets live: the database (`DatabaseBuckets`) or Redis
    (`store.redis_limits.RedisLimits`). Each call is atomic on its own."""

    def take(self, scope: str, key: str, caller: str, now: float, burst: float, rate: float) -> tuple[float, bool]:
        """Refill and take one token: (the tokens left, whether one was taken). A refusal
        tells `caller` to wait until the next token, keeping whether ignoring this same wait
        was counted already."""
        ...

    def told_until(self, scope: str, caller: str) -> float | None:
        """Until when `caller`'s last refusal said to wait (None: never told, or forgotten)."""
        ...

    def count_offence(self, scope: str, caller: str, now: float) -> bool:
        """Mark `caller`'s current wait as ignored; True when it was not marked yet."""
        ...

    def give_back(self, scope: str, key: str, now: float, burst: float, rate: float) -> None:
        ...

    def prune(self, scope: str, now: float, burst: float, rate: float) -> None:
        """Forget full buckets and past waits (Redis lets them expire by themselves)."""
        ...


class SharedBuckets:
    """`TokenBuckets` held across servers: `scope` names the kind of bucket ("key", "ip");
    `store` is a `Database` (its tables) or any other `BucketStore` (Redis)."""

    # Prune once in this many takes of a process.
    _PRUNE_EVERY = 1000

    def __init__(self, store: Database | BucketStore, scope: str, per_minute: float, burst: int) -> None:
        self.store: BucketStore = DatabaseBuckets(store) if isinstance(store, Database) else store
        self.scope = scope
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._takes = itertools.count(1)

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def take(self, key: str, now: float, *, caller: str | None = None) -> float:
        """Take a token for `key`; 0.0 when granted, else the seconds until one is there
        (told to `caller`, by default `key`)."""
        if not self.enabled:
            return 0.0
        tokens, granted = self.store.take(self.scope, key, caller or key, now, self.burst, self.rate)
        if next(self._takes) % self._PRUNE_EVERY == 0:
            self.prune(now)
        return 0.0 if granted else (1.0 - tokens) / self.rate

    def ignored_retry_after(self, key: str, now: float) -> bool:
        """Whether `key` comes back before the wait its last refusal named."""
        wait_until = self.store.told_until(self.scope, key)
        return wait_until is not None and wait_until > now

    def offence(self, caller: str, now: float) -> bool:
        """Whether `caller` ignores a wait it was told and this wait was not counted yet."""
        return self.store.count_offence(self.scope, caller, now)

    def give_back(self, key: str, now: float) -> None:
        """Return a token taken for a request that a later rule refused."""
        if self.enabled:
            self.store.give_back(self.scope, key, now, self.burst, self.rate)

    def prune(self, now: float) -> None:
        """Drop the buckets that have refilled and the waits that are over."""
        self.store.prune(self.scope, now, self.burst, self.rate)


class SharedSlots:
    """`Slots` in the database: at most `limit` places per key across every server.

    A place lives `ttl` seconds unless renewed (`renew`, which its holder calls while it keeps
    the stream open), so the places of a server that dies are free again after `ttl`.
    """

    def __init__(self, db: Database, limit: int, ttl: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.limit = limit
        self.ttl = ttl
        self.clock = clock
        self._mine: dict[str, list[str]] = {}  # key -> place ids this process holds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception:  # the database briefly away: the places outlive one miss
                log.warning("renewing open event streams' places failed; retrying", exc_info=True)

    def stop(self) -> None:
        """Stop renewing and give back every place this process holds."""
        self._stop.set()
        with self._lock:
            places = [p for ps in self._mine.values() for p in ps]
            self._mine = {}
        try:
            with self.db.transaction() as tx:
                for place in places:
                    tx.run("DELETE FROM stream_places WHERE id = ?", (place,))
        except Exception:  # they expire by themselves
            log.warning("giving back open event streams' places failed", exc_info=True)

    def acquire(self, key: str) -> bool:
        """Take a place for `key`; False when it already holds `limit`."""
        now = self.clock()
        place = uuid.uuid4().hex
        with self.db.transaction() as tx:
            if self.db.dialect == "postgresql":
                # One key's acquirers take turns, so two cannot both take the last place.
                tx.execute("SELECT pg_advisory_xact_lock(hashtext(?))", ("stream:" + key,))
            tx.run("DELETE FROM stream_places WHERE holder = ? AND expires_at <= ?", (key, now))
            held = int(tx.scalar("SELECT count(*) AS n FROM stream_places WHERE holder = ?", (key,)))
            if held >= self.limit:
                return False
            tx.execute("INSERT INTO stream_places (id, holder, expires_at) VALUES (?, ?, ?)", (place, key, now + self.ttl))
        with self._lock:
            self._mine.setdefault(key, []).append(place)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_forever, name="stream-places", daemon=True)
                self._renewer.start()
        return True

    def release(self, key: str) -> None:
        with self._lock:
            places = self._mine.get(key) or []
            place = places.pop() if places else None
            if not places:
                self._mine.pop(key, None)
        if place is not None:
            with self.db.transaction() as tx:
                tx.run("DELETE FROM stream_places WHERE id = ?", (place,))

    def renew(self) -> None:
        """Push back the expiry of every place this process holds."""
        with self._lock:
            places = [p for ps in self._mine.values() for p in ps]
        if places:
            with self.db.transaction() as tx:
                expires = self.clock() + self.ttl
                for start in range(0, len(places), 500):
                    part = places[start:start + 500]
                    marks = ", ".join("?" for _ in part)
                    tx.run(f"UPDATE stream_places SET expires_at = ? WHERE id IN ({marks})", (expires, *part))

    def held(self, key: str) -> int:
        now = self.clock()
        with self.db.transaction(write=False) as tx:
            return int(tx.scalar(
                "SELECT count(*) AS n FROM stream_places WHERE holder = ? AND expires_at > ?", (key, now)))
