"""Admission control as plain rules: token buckets, free-tier caps that follow the queue,
and escalating timeouts. Pure Python; the server applies them at submit and says why.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """Why a request was not queued. `retry_after` (seconds) is set where waiting helps."""

    status: int  # 429: try again later; 403: not like this
    message: str
    retry_after: float | None = None


class TokenBuckets:
    """One token bucket per key (an API key, an address): `burst` tokens, refilled at
    `per_minute` a minute. Each accepted request takes one token.

    A refusal tells its caller to wait; the bucket remembers that per caller (by default the
    bucket's key; an address's bucket is shared by everyone there, so its refusals are
    remembered per user or keyless address), to tell an offence from a client that waits.

    In memory, per server process: what SQLite servers use. On PostgreSQL the server uses
    `store.buckets.SharedBuckets`, the same rules in the database, so they hold across servers;
    queue caps, bans and timeouts live in the database on both.
    """

    # Buckets that have refilled completely carry no information; drop them past this size.
    _PRUNE_AT = 10_000

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        # caller -> (until when its last refusal said to wait, whether coming back early
        # was already counted as an offence)
        self._told: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def take(self, key: str, now: float, *, caller: str | None = None) -> float:
        """Take a token for `key`; 0.0 when granted, else the seconds until one is there
        (told to `caller`, by default `key`)."""
        if not self.enabled:
            return 0.0
        with self._lock:
            tokens = self._level(key, now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            who = caller or key
            until, counted = self._told.get(who, (0.0, False))
            # Refusals within one wait belong to it: whether it was ignored carries over.
            self._told[who] = (now + wait, counted and until > now)
            return wait

    def ignored_retry_after(self, key: str, now: float) -> bool:
        """Whether `key` comes back before the wait its last refusal named: the one way of
        breaking a rate limit that counts as an offence (a client that waits as told, then
        sends at the limit, breaks nothing)."""
        with self._lock:
            return self._told.get(key, (0.0, False))[0] > now

    def offence(self, caller: str, now: float) -> bool:
        """Whether `caller` ignores a wait it was told and this wait was not counted yet: a
        burst of requests that ignore one Retry-After is one offence, not one per request."""
        with self._lock:
            until, counted = self._told.get(caller, (0.0, False))
            if until <= now or counted:
                return False
            self._told[caller] = (until, True)
            return True

    def give_back(self, key: str, now: float) -> None:
        """Return a token taken for a request that a later rule refused: a refusal should
        not also eat the caller's allowance."""
        if not self.enabled:
            return
        with self._lock:
            self._buckets[key] = (min(self.burst, self._level(key, now) + 1.0), now)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        level = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if len(self._buckets) > self._PRUNE_AT or len(self._told) > self._PRUNE_AT:
            self._prune(now)
        return level

    def _prune(self, now: float) -> None:
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        for who in [w for w, (until, _) in self._told.items() if until <= now]:
            del self._told[who]


class Slots:
    """At most `limit` things held at once per key (open event streams per user), in memory
    per process: a server can only count the connections it holds itself."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        """Take a place for `key`; False when it already holds `limit`."""
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.limit:
                return False
            self._held[key] = held + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            held = self._held.get(key, 0) - 1
            if held > 0:
                self._held[key] = held
            else:
                self._held.pop(key, None)

    def held(self, key: str) -> int:
        with self._lock:
            return self._held.get(key, 0)


@dataclass(frozen=True)
class FreeCaps:
    """Largest job a free-tier user may queue."""

    max_pixels: int
    max_steps: int
    max_images: int


# Under full load the free tier gets one reference image (cost.py's compute unit).
FLOOR_CAPS = FreeCaps(max_pixels=512 * 512, max_steps=20, max_images=1)


def free_caps(idle: FreeCaps, queued_jobs: int, busy_queue: int, floor: FreeCaps = FLOOR_CAPS) -> FreeCaps:
    """Caps when `queued_jobs` wait: `idle` with an empty queue, sliding linearly down to
    `floor` (never above `idle`) when `busy_queue` or more jobs wait."""
    load = 1.0 if busy_queue <= 0 else min(1.0, max(0, queued_jobs) / busy_queue)

    def slide(high: int, low: int) -> int:
        low = min(low, high)
        return int(math.floor(high - (high - low) * load))

    return FreeCaps(
        max_pixels=slide(idle.max_pixels, floor.max_pixels),
        max_steps=slide(idle.max_steps, floor.max_steps),
        max_images=slide(idle.max_images, floor.max_images),
    )


def over_free_caps(width: int, height: int, steps: int, images: int, caps: FreeCaps) -> str | None:
    """The first cap the request breaks, as a sentence, or None."""
    if width * height > caps.max_pixels:
        side = int(math.isqrt(caps.max_pixels))
        return f"{width}x{height} is {width * height} pixels; the free tier allows {caps.max_pixels} now (about {side}x{side})"
    if steps > caps.max_steps:
        return f"{steps} steps; the free tier allows {caps.max_steps} now"
    if images > caps.max_images:
        return f"{images} images in one job; the free tier allows {caps.max_images} now"
    return None


@dataclass(frozen=True)
class TimeoutPolicy:
    """Offences within `window` seconds count together; from the `threshold`-th on, each
    one blocks the offender (a user, or a keyless caller's address) for `base` seconds,
    doubling per further offence up to `most`."""

    threshold: int = 5
    window: float = 3600.0
    base: float = 60.0
    most: float = 86400.0


def timeout_seconds(policy: TimeoutPolicy, offences: int) -> float:
    """How long an offender is blocked after their `offences`-th offence in the window."""
    if policy.threshold <= 0 or offences < policy.threshold:
        return 0.0
    return min(policy.most, policy.base * 2.0 ** (offences - policy.threshold))
