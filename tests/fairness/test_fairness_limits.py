"""Admission rules as plain functions: buckets refill, caps slide with the queue, timeouts
escalate, merit weights."""

from __future__ import annotations

import pytest

from kakumei.fairness.credits import MeritPolicy, current_share, is_free_tier, merit_weight
from kakumei.fairness.limits import FLOOR_CAPS, FreeCaps, TimeoutPolicy, TokenBuckets, free_caps, over_free_caps, timeout_seconds


def test_token_bucket_allows_a_burst_then_refills() -> None:
    buckets = TokenBuckets(per_minute=60, burst=3)
    assert [buckets.take("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", 0.0) == pytest.approx(1.0)  # one token a second
    assert buckets.take("other", 0.0) == 0.0  # keys are separate
    assert buckets.take("k", 1.0) == 0.0  # refilled
    assert buckets.take("k", 1.0) > 0
    assert buckets.take("k", 100.0) == 0.0
    assert [buckets.take("k", 100.0) for _ in range(3)][-1] > 0  # never more than the burst


def test_given_back_tokens_and_disabled_buckets() -> None:
    buckets = TokenBuckets(per_minute=1, burst=1)
    assert buckets.take("k", 0.0) == 0.0
    buckets.give_back("k", 0.0)
    assert buckets.take("k", 0.0) == 0.0
    off = TokenBuckets(per_minute=0, burst=5)
    assert all(off.take("k", 0.0) == 0.0 for _ in range(100))


def test_free_caps_tighten_with_the_queue_and_relax_when_idle() -> None:
    idle = FreeCaps(max_pixels=1024 * 1024, max_steps=50, max_images=4)
    assert free_caps(idle, 0, 100) == idle
    half = free_caps(idle, 50, 100)
    assert FLOOR_CAPS.max_steps < half.max_steps < idle.max_steps
    assert free_caps(idle, 100, 100) == FLOOR_CAPS == free_caps(idle, 10_000, 100)
    assert over_free_caps(512, 512, 20, 1, FLOOR_CAPS) is None
    assert "steps" in (over_free_caps(512, 512, 30, 1, FLOOR_CAPS) or "")
    assert "pixels" in (over_free_caps(1024, 1024, 20, 1, FLOOR_CAPS) or "")
    assert "images" in (over_free_caps(512, 512, 20, 2, FLOOR_CAPS) or "")


def test_timeouts_start_at_the_threshold_and_double() -> None:
    policy = TimeoutPolicy(threshold=3, base=60, most=1000)
    assert [timeout_seconds(policy, n) for n in (1, 2, 3, 4, 5, 10)] == [0, 0, 60, 120, 240, 1000]


def test_merit_weight_grows_with_balance_and_saturates() -> None:
    policy = MeritPolicy()
    weights = [merit_weight(policy, is_anonymous=False, balance=b) for b in (-50, 0, 100, 10_000)]
    assert weights[0] == weights[1] == 1.0
    assert weights[2] == pytest.approx(3.0)
    assert 4.9 < weights[3] < 5.0
    assert merit_weight(policy, is_anonymous=True, balance=1e6) == 0.5
    assert merit_weight(policy, is_anonymous=False, balance=0, override=7.0) == 7.0
    assert is_free_tier(is_anonymous=False, balance=0, override=None)
    assert not is_free_tier(is_anonymous=False, balance=1, override=None)
    assert current_share(1.0, [1.0, 2.0]) == 0.25


def test_an_admin_weight_or_flag_takes_anyone_out_of_the_free_tier() -> None:
    assert is_free_tier(is_anonymous=True, balance=0, override=None)
    assert is_free_tier(is_anonymous=True, balance=50, override=None)  # anonymous credit buys nothing
    assert not is_free_tier(is_anonymous=True, balance=0, override=2.0)
    assert not is_free_tier(is_anonymous=False, balance=0, override=0.5)
    assert not is_free_tier(is_anonymous=False, balance=0, override=None, is_admin=True)


def test_only_coming_back_before_retry_after_is_an_offence() -> None:
    buckets = TokenBuckets(per_minute=60, burst=1)
    assert buckets.take("k", 0.0) == 0.0
    assert not buckets.ignored_retry_after("k", 0.5)
    assert buckets.take("k", 0.5) == pytest.approx(0.5)  # told: wait until 1.0
    assert buckets.ignored_retry_after("k", 0.7)
    assert not buckets.ignored_retry_after("k", 1.0)
