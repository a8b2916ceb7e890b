"""Admission control at submit: who may queue what, now. Every refusal is a `Refusal` with a
sentence and, where waiting helps, the seconds to wait; `submit_generation` applies it for
every API.

Order: bans, timeouts and terms first (they do not depend on the request), then the
prompt blocklist, rate limits, free-tier caps and queue caps.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from kakumei.config import Settings
from kakumei.fairness.cost import request_cost, work_size
from kakumei.fairness.credits import MeritPolicy, is_free_tier
from kakumei.fairness.groups import NETWORK, GroupPolicy, group_key, network_of
from kakumei.fairness.limits import FreeCaps, Refusal, TimeoutPolicy, TokenBuckets, free_caps, over_free_caps
from kakumei.schemas import GenerationRequest
from kakumei.store.buckets import BucketStore, SharedBuckets
from kakumei.store.db import Database
from kakumei.store.jobs import JobStore
from kakumei.store.moderation import Moderation
from kakumei.store.quotas import (
    ANONYMOUS_GROUP,
    FREE_IN_GROUP,
    FREE_USERS_IN_GROUP,
    OWN,
    NotCovered,
    QueueCounts,
    QueueFull,
    QueueLimits,
    first_full,
    next_queued,
    queue_counts,
    queued_total,
)
from kakumei.store.users import ANONYMOUS, User, UserStore


def merit_policy(settings: Settings) -> MeritPolicy:
    return MeritPolicy(
        anonymous_weight=settings.anonymous_weight,
        max_bonus=settings.merit_max_bonus,
        half_balance=settings.merit_half_balance,
    )


def group_policy(settings: Settings) -> GroupPolicy:
    return GroupPolicy(
        v4_prefix=settings.group_prefix_v4, v6_prefix=settings.group_prefix_v6, enabled=settings.network_groups
    )


def timeout_policy(settings: Settings) -> TimeoutPolicy:
    return TimeoutPolicy(
        threshold=settings.offence_threshold,
        window=settings.offence_window_seconds,
        base=settings.timeout_seconds,
        most=settings.timeout_max_seconds,
    )


def terms_version(settings: Settings) -> str | None:
    """A short digest of the terms: changing their text asks everyone to accept again."""
    if not settings.terms:
        return None
    import hashlib

    return hashlib.sha256(settings.terms.encode("utf-8")).hexdigest()[:12]


def _wait(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} seconds"
    if seconds < 5400:
        return f"{math.ceil(seconds / 60)} minutes"
    return f"{math.ceil(seconds / 3600)} hours"


def rate_buckets(
    db: Database, scope: str, per_minute: float, burst: int, limits: BucketStore | None = None
) -> TokenBuckets | SharedBuckets:
    """In `limits` (Redis, setting `redis_url`) when given; else on PostgreSQL, where several
    servers may share the database, in it, so that a key's burst holds across them; on SQLite
    (one machine) in this process's memory."""
    if limits is not None:
        return SharedBuckets(limits, scope, per_minute, burst)
    if db.dialect == "postgresql":
        return SharedBuckets(db, scope, per_minute, burst)
    return TokenBuckets(per_minute, burst)


class Admission:
    """The rules of one server; everything it counts lives in the database, except the
    rate-limit buckets on SQLite and whatever `limits` (Redis) keeps (`rate_buckets`)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        jobs: JobStore,
        moderation: Moderation,
        *,
        clock: Callable[[], float] = time.time,
        limits: BucketStore | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.jobs = jobs
        self.moderation = moderation
        self.clock = clock
        self.by_key = rate_buckets(db, "key", settings.key_rate_per_minute, settings.key_burst, limits)
        self.by_ip = rate_buckets(db, "ip", settings.ip_rate_per_minute, settings.ip_burst, limits)
        self.groups = group_policy(settings)
        self._shared: int | None = None
        self.timeouts = timeout_policy(settings)
        self.blocklist = [re.compile(p, re.IGNORECASE) for p in settings.prompt_blocklist]
        self.idle_caps = FreeCaps(settings.free_max_pixels, settings.free_max_steps, settings.free_max_images)

    # -- the parts that do not depend on the request ----------------------------------

    def standing(self, user: User, addr: str | None) -> Refusal | None:
        """Bans, timeouts and terms: whether this caller may submit anything now."""
        now = self.clock()
        ban = self.moderation.ban_of(addr, None if user.is_anonymous else user.id)
        if ban is not None:
            who = "your address" if ban.kind == "ip" else "your account"
            if ban.expires_at is None:
                return Refusal(403, f"{who} is banned from this server: {ban.reason}")
            left = ban.expires_at - now
            return Refusal(403, f"{who} is banned from this server for {_wait(left)} more: {ban.reason}", left)
        # A timeout stops the offender only: a registered user's account, or the address of
        # keyless callers; other users at that address are not the offender.
        if user.is_anonymous:
            blocked, who = self.moderation.blocked_until(addr), "your address"
        else:
            blocked, who = self.moderation.user_blocked_until(user.id), "your account"
        if blocked is not None:
            until, reason = blocked
            return Refusal(
                403,
                f"{who} broke this server's rules {self.timeouts.threshold} or more times "
                f"(last: {reason}); it may submit again in {_wait(until - now)}",
                until - now,
            )
        version = terms_version(self.settings)
        # Keyless callers' acceptance is kept under the shared anonymous user and their
        # address (server/deps.py Caller.scope_id), before and after their first job.
        if version is not None and not self.moderation.accepted_terms(
            self._shared_id() if user.is_anonymous else user.id, addr if user.is_anonymous else None, version
        ):
            return Refusal(
                403,
                "accept this server's terms before your first job: read them at GET /api/v1/me, "
                "then POST /api/v1/me/terms with {\"accepted\": true, \"version\": \"" + version + "\"}",
            )
        return None

    # -- the whole check --------------------------------------------------------------

    def check(self, user: User, addr: str | None, request: GenerationRequest, cost: float | None = None) -> Refusal | None:
        """None when the job may be queued; otherwise why not. `cost`: the job's compute units
        (by default computed for the request's model)."""
        refusal = self.standing(user, addr)
        if refusal is not None:
            return refusal
        for pattern in self.blocklist:
            # A translated prompt is checked as written and in English.
            texts = (request.prompt, request.negative_prompt, request.prompt_original or "", request.negative_prompt_original or "")
            if any(pattern.search(text) for text in texts):
                return self._offence(user, addr, "blocked prompt", Refusal(
                    403, "the prompt matches a pattern this server's operator does not allow; change the prompt"))
        now = self.clock()
        # The per-key bucket is the person's (a keyless caller is one person per address);
        # the address bucket is the network group's for people without merit, so that a
        # network's keys and addresses share one allowance.
        key = f"user:{user.id}" if user.id != self.shared_anonymous_id(user) else None
        bucket = self.address_bucket(user, addr)
        # Whom the rate limits tell to wait, and who offends by not waiting: the person, or
        # the address of a keyless caller.
        offender = key or addr
        ignored = offender is not None and (
            self.by_key.offence(offender, now) | self.by_ip.offence(offender, now))  # both: one offence
        wait = self.by_key.take(key, now) if key else 0.0
        if wait:
            return self._rate_refusal(ignored, user, addr, Refusal(
                429, f"too many requests with this API key: {self.settings.key_rate_per_minute:g} a minute "
                f"(bursts of {self.settings.key_burst}); retry in {_wait(wait)}", wait))
        ip_wait = self.by_ip.take(bucket, now, caller=offender) if bucket else 0.0
        if ip_wait:
            if key:
                self.by_key.give_back(key, now)
            where = "your network" if bucket and bucket.startswith(NETWORK + ":") else "your address"
            return self._rate_refusal(ignored, user, addr, Refusal(
                429, f"too many requests from {where}: {self.settings.ip_rate_per_minute:g} a minute "
                f"(bursts of {self.settings.ip_burst}); retry in {_wait(ip_wait)}", ip_wait))
        refusal = self._queue_rules(user, addr, request, self._cost(request, cost))
        if refusal is not None:
            # A refused request should not also use up the caller's allowance.
            if key:
                self.by_key.give_back(key, now)
            if bucket:
                self.by_ip.give_back(bucket, now)
        return refusal

    def _shared_id(self) -> int:
        if self._shared is None:
            self._shared = UserStore(self.db).anonymous().id
        return self._shared

    @staticmethod
    def shared_anonymous_id(user: User) -> int | None:
        """The shared `anonymous` user of older releases has no key bucket (it is many people)."""
        return user.id if user.is_anonymous and user.name == ANONYMOUS else None

    def address_bucket(self, user: User, addr: str | None) -> str | None:
        """The address rate limit's bucket: the network group's for people without merit
        (when network groups are on), else the address's."""
        if not addr:
            return None
        if self.groups.enabled and self.free(user):
            network = network_of(addr, self.groups)
            if network is not None:
                return f"{NETWORK}:{network}"
        return addr

    def group_key(self, user: User, addr: str | None) -> str:
        """The fair-share group the caller's next job joins (if they have nothing queued)."""
        return group_key(user.id, addr, stands_alone=not self.free(user), policy=self.groups)

    def _rate_refusal(self, ignored: bool, user: User, addr: str | None, refusal: Refusal) -> Refusal:
        return self._offence(user, addr, "ignored Retry-After", refusal) if ignored else refusal

    def _offence(self, user: User, addr: str | None, reason: str, refusal: Refusal) -> Refusal:
        if user.is_anonymous:
            self.moderation.offence(addr, reason, self.timeouts)
        else:
            self.moderation.user_offence(user.id, reason, self.timeouts)
        return refusal

    def free(self, user: User) -> bool:
        return is_free_tier(is_anonymous=user.is_anonymous, balance=user.balance,
                            override=user.weight_override, is_admin=user.is_admin)

    def exempt(self, user: User) -> bool:
        """Admins and users with an admin-set weight: the free-tier caps are not theirs."""
        return user.is_admin or user.weight_override is not None

    def _cost(self, request: GenerationRequest, cost: float | None) -> float:
        return request_cost(request, request.model or self.settings.model) if cost is None else cost

    def beyond_free(self, user: User, request: GenerationRequest, queued: int) -> str | None:
        """The free-tier cap the request breaks now (as a sentence), or None; None always for
        exempt users. The hires output size and second-pass steps count (cost.work_size)."""
        if self.exempt(user):
            return None
        size = work_size(request)
        return over_free_caps(size.width, size.height, size.steps, size.images, self.caps_now(queued))

    def caps_now(self, queued: int) -> FreeCaps:
        return free_caps(self.idle_caps, queued, self.settings.free_busy_queue)

    def queue_limits(self, user: User, addr: str | None, request: GenerationRequest | None = None) -> QueueLimits:
        """The queue caps for this caller: checked first here, then again by `JobStore.submit`
        in the transaction that queues the job, so concurrent submits cannot all pass. The
        free-tier caps count the caller's group: a network's people without merit together.
        With `request`: whether its cost must be covered by the balance (beyond the free tier),
        held in that transaction too."""
        s = self.settings
        free = self.free(user)
        # Only the server's total counts here: one read, not the caller's whole queue state.
        cover = request is not None and not self.exempt(user) and self.beyond_free(
            user, request, queued_total(self.db)) is not None
        return QueueLimits(
            own=s.max_queued_jobs,
            anonymous_group=s.anonymous_max_queued if user.is_anonymous else None,
            free_in_group=s.free_queued_per_ip if free else None,
            free_users_in_group=s.free_users_per_ip if free else None,
            cover=cover,
        )

    def when_not_covered(self, user: User, addr: str | None, request: GenerationRequest, short: NotCovered) -> Refusal:
        """The refusal for a job `JobStore.submit` found the balance short for (another submit
        spent it meanwhile); the rate-limit tokens `check` took are given back."""
        self._give_back(user, addr)
        counts = self.queue_state(user, addr)
        broken = self.beyond_free(user, request, counts.total) or "the job is beyond the free tier"
        return self._short_refusal(user, broken, short.cost, short.balance)

    def _short_refusal(self, user: User, broken: str, cost: float, balance: float) -> Refusal:
        if user.is_anonymous:
            return Refusal(403, f"{broken}; with credit (an account that runs a worker) larger jobs are allowed")
        missing = cost - max(0.0, balance)
        return Refusal(
            403,
            f"{broken}; a job beyond the free tier needs credit for all of it: it costs {cost:.2f} credits, "
            f"your balance is {balance:.2f}, {missing:.2f} credits are missing (run a worker to earn them, "
            f"or make the job smaller)",
        )

    def _give_back(self, user: User, addr: str | None) -> None:
        now = self.clock()
        if user.id != self.shared_anonymous_id(user):
            self.by_key.give_back(f"user:{user.id}", now)
        bucket = self.address_bucket(user, addr)
        if bucket:
            self.by_ip.give_back(bucket, now)

    def when_full(self, user: User, addr: str | None, full: QueueFull) -> Refusal:
        """The refusal for a cap `JobStore.submit` found reached: the same as `check` gives,
        and the rate-limit tokens `check` took are given back."""
        self._give_back(user, addr)
        return self._full_refusal(user, addr, full.cap, full.counts)

    def _queue_rules(self, user: User, addr: str | None, request: GenerationRequest, cost: float) -> Refusal | None:
        counts = self.queue_state(user, addr)
        broken = self.beyond_free(user, request, counts.total)
        # Beyond the free tier a job needs a balance that covers all of it: a balance lifts
        # the caps only for what it pays for (the cost is then reserved at submit).
        if broken is not None and (user.is_anonymous or user.balance + 1e-9 < cost):
            size = work_size(request)
            if over_free_caps(size.width, size.height, size.steps, size.images, self.idle_caps) is None:
                # Allowed when the queue is shorter: say so, and when to look again.
                wait = 60.0  # queues drain and fill quickly; look again in a minute
                return Refusal(429, f"the queue is busy: {broken}; a smaller job is accepted now, "
                                    f"or retry when the queue is shorter", wait)
            return self._short_refusal(user, broken, cost, user.balance)
        cap = first_full(counts, self.queue_limits(user, addr), user.id)
        return None if cap is None else self._full_refusal(user, addr, cap, counts)

    def _full_refusal(self, user: User, addr: str | None, cap: str, counts: QueueCounts) -> Refusal:
        if cap == OWN:
            where = " from your address" if user.is_anonymous else ""
            return Refusal(429, f"you have {counts.own} jobs queued{where}, the most this server allows; "
                                f"retry when one has started", self._eta(user_id=user.id))
        if cap == ANONYMOUS_GROUP:
            return Refusal(429, f"anonymous visitors together have {counts.anonymous} jobs queued, the most this "
                                f"server allows; retry later or use an API key", self._eta(keyless=True))
        network = network_of(addr, self.groups) if self.groups.enabled else None
        where = f"your network {network}" if network else "your group"
        if cap == FREE_IN_GROUP:
            return Refusal(429, f"free-tier people on {where} have {counts.free_in_group} jobs queued together, "
                                f"the most this server allows; retry when one has started",
                           self._eta(group_id=counts.group_id))
        assert cap == FREE_USERS_IN_GROUP, cap
        return Refusal(429, f"{len(counts.free_users_in_group)} free-tier people on {where} already have "
                            f"jobs queued, the most this server allows; retry when theirs have started",
                       self._eta(group_id=counts.group_id))

    def _eta(self, *, user_id: int | None = None, group_id: int | None = None, keyless: bool = False) -> float | None:
        """When the first of these queued jobs should start: a fair time to retry."""
        if user_id is None and group_id is None and not keyless:
            return None
        job_id = next_queued(self.db, user_id=user_id, group_id=group_id, keyless=keyless)
        if job_id is None:
            return None
        placed = self.jobs.place(job_id)
        if placed is None:
            return None
        # Its ETA runs to the end of that job: by then a slot is surely free.
        return max(1.0, placed[1])

    def queue_state(self, user: User, addr: str | None) -> QueueCounts:
        return queue_counts(self.db, user.id, self.group_key(user, addr))
