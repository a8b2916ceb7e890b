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

    In memory: limits are per server process, which is what protects that process; queue
    caps, bans and timeouts live in the database and hold across servers and restarts.
    """

    # Buckets that have refilled completely carry no information; drop them past this size.
    _PRUNE_AT = 10_000

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._told: dict[str, float] = {}  # key -> until when its last refusal said to wait
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def take(self, key: str, now: float) -> float:
        """Take a token for `key`; 0.0 when granted, else the seconds until one is there."""
        if not self.enabled:
            return 0.0
        with self._lock:
            tokens = self._level(key, now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            self._told[key] = now + wait
            return wait

    def ignored_retry_after(self, key: str, now: float) -> bool:
        """Whether `key` comes back before the wait its last refusal named: the one way of
        breaking a rate limit that counts as an offence (a client that waits as told, then
        sends at the limit, breaks nothing)."""
        with self._lock:
            return self._told.get(key, 0.0) > now

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
        if len(self._buckets) > self._PRUNE_AT:
            self._prune(now)
        return level

    def _prune(self, now: float) -> None:
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
            self._told.pop(key, None)


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
    one blocks the address for `base` seconds, doubling per further offence up to `most`."""

    threshold: int = 5
    window: float = 3600.0
    base: float = 60.0
    most: float = 86400.0


def timeout_seconds(policy: TimeoutPolicy, offences: int) -> float:
    """How long an address is blocked after its `offences`-th offence in the window."""
    if policy.threshold <= 0 or offences < policy.threshold:
        return 0.0
    return min(policy.most, policy.base * 2.0 ** (offences - policy.threshold))
