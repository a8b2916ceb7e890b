"""Rate limits, offences and timeouts in Redis (setting `redis_url`): what servers sharing one
Redis count together, at a fraction of a database transaction's cost.

`RedisLimits` is a `store.buckets.BucketStore` (for `SharedBuckets`) and a
`store.moderation.OffenceStore` (for `Moderation`). Every change is one Lua script, which
Redis runs alone: two servers taking the last token of a bucket at once get one token
between them. Keys expire by themselves once they say nothing more (a bucket full again, a
wait over, an offence out of its window and its timeout), so nothing needs pruning.

Keys, under the setting `redis_prefix`: `bucket:<scope>:<key>` and `told:<scope>:<caller>`
(hashes), `offence:<ip|user>:<offender>` (a hash). A take's script touches a bucket and a
caller's wait, two keys that Redis Cluster may place on different nodes: one Redis (with
replicas or Sentinel if you like), not a Cluster. Imported only when `redis_url` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

# KEYS: bucket, told. ARGV: burst, rate (tokens a second), now. The same rules as
# fairness.limits.TokenBuckets.take; returns {tokens left, 1 when granted}.
_TAKE = """
local burst, rate, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
local level = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = level >= 1
if granted then level = level - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(level), 'at', tostring(math.max(at, now)))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - level) / rate * 1000) + 1000)
if not granted then
  local wait = (1 - level) / rate
  local t = redis.call('HMGET', KEYS[2], 'until', 'counted')
  local counted = '0'
  if t[2] == '1' and tonumber(t[1]) > now then counted = '1' end
  redis.call('HSET', KEYS[2], 'until', tostring(now + wait), 'counted', counted)
  redis.call('PEXPIRE', KEYS[2], math.ceil(wait * 1000) + 1000)
end
return {tostring(level), granted and 1 or 0}
"""

# KEYS: bucket. ARGV: burst, rate, now. A bucket that expired is full: nothing to give back.
_GIVE_BACK = """
local burst, rate, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
if not b[1] then return 0 end
local tokens, at = tonumber(b[1]), tonumber(b[2])
local level = math.min(burst, tokens + math.max(0, now - at) * rate + 1)
redis.call('HSET', KEYS[1], 'tokens', tostring(level), 'at', tostring(math.max(at, now)))
return 1
"""

# KEYS: told. ARGV: now. 1 when the current wait was not counted yet (and now is).
_COUNT_OFFENCE = """
local t = redis.call('HMGET', KEYS[1], 'until', 'counted')
if not t[1] or tonumber(t[1]) <= tonumber(ARGV[1]) or t[2] ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'counted', '1')
return 1
"""

# KEYS: offence. ARGV: now, window, reason. The offence's number within the window.
_COUNT = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local o = redis.call('HMGET', KEYS[1], 'offences', 'last_at')
local offences = 1
if o[1] and now - tonumber(o[2]) <= window then offences = tonumber(o[1]) + 1 end
redis.call('HSET', KEYS[1], 'offences', offences, 'last_at', tostring(now), 'last_reason', ARGV[3])
return offences
"""

# KEYS: offence. ARGV: blocked until (0: no new timeout), now, window. Never shortens a
# timeout; the key lives while its count or its timeout does. Returns the blocked-until time.
_BLOCK = """
local now, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local previous = tonumber(redis.call('HGET', KEYS[1], 'blocked_until') or '0')
local blocked = math.max(previous, tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'blocked_until', tostring(blocked))
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(now + window, blocked) - now) * 1000) + 1000)
return tostring(blocked)
"""


class RedisLimits:
    """Buckets and offences of every server that shares `url` and `prefix`."""

    def __init__(self, url: str, prefix: str = "kakumei:") -> None:
        # A Redis that stops answering fails a request after seconds instead of holding its
        # thread (and so the server's request threads) for ever.
        self.client: Any = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5,
                                                socket_connect_timeout=5, health_check_interval=30)
        self.prefix = prefix
        self._take = self.client.register_script(_TAKE)
        self._give_back = self.client.register_script(_GIVE_BACK)
        self._count_offence = self.client.register_script(_COUNT_OFFENCE)
        self._count = self.client.register_script(_COUNT)
        self._block = self.client.register_script(_BLOCK)

    def close(self) -> None:
        self.client.close()

    def ping(self) -> None:
        """Raise when Redis cannot be reached: a server with `redis_url` set does not start
        without it (its limits would not hold)."""
        self.client.ping()

    # -- BucketStore ----------------------------------------------------------------------

    def _bucket(self, scope: str, key: str) -> str:
        return f"{self.prefix}bucket:{scope}:{key}"

    def _told(self, scope: str, caller: str) -> str:
        return f"{self.prefix}told:{scope}:{caller}"

    def take(self, scope: str, key: str, caller: str, now: float, burst: float, rate: float) -> tuple[float, bool]:
        tokens, granted = self._take(keys=[self._bucket(scope, key), self._told(scope, caller)],
                                     args=[repr(burst), repr(rate), repr(now)])
        return float(tokens), bool(int(granted))

    def told_until(self, scope: str, caller: str) -> float | None:
        until = self.client.hget(self._told(scope, caller), "until")
        return None if until is None else float(until)

    def count_offence(self, scope: str, caller: str, now: float) -> bool:
        return bool(self._count_offence(keys=[self._told(scope, caller)], args=[repr(now)]))

    def give_back(self, scope: str, key: str, now: float, burst: float, rate: float) -> None:
        self._give_back(keys=[self._bucket(scope, key)], args=[repr(burst), repr(rate), repr(now)])

    def prune(self, scope: str, now: float, burst: float, rate: float) -> None:
        """Nothing to do: Redis expires what says nothing more."""

    # -- OffenceStore ---------------------------------------------------------------------

    def _offender(self, kind: str, offender: str) -> str:
        return f"{self.prefix}offence:{kind}:{offender}"

    def record(self, kind: str, offender: str, reason: str, now: float, window: float,
               timeout_for: Callable[[int], float]) -> float:
        key = self._offender(kind, offender)
        offences = int(self._count(keys=[key], args=[repr(now), repr(window), reason]))
        # Two scripts: the count is atomic, the timeout only grows, so concurrent offences
        # each get their own number and the longest timeout wins.
        timeout = timeout_for(offences)
        return float(self._block(keys=[key], args=[repr(now + timeout if timeout else 0.0), repr(now), repr(window)]))

    def blocked(self, kind: str, offender: str, now: float) -> tuple[float, str] | None:
        until, reason = self.client.hmget(self._offender(kind, offender), "blocked_until", "last_reason")
        if until is None or float(until) <= now:
            return None
        return float(until), reason

    def forget(self, kind: str, offender: str, tx: Any = None) -> bool:
        return bool(self.client.delete(self._offender(kind, offender)))
