"""What counts as an offence against a rate limit: coming back before the wait one was told,
once per wait; an address's bucket tells each caller there apart."""

from __future__ import annotations

from kakumei.fairness.limits import Slots, TokenBuckets


def test_a_burst_within_one_wait_is_one_offence() -> None:
    buckets = TokenBuckets(per_minute=60, burst=1)
    assert buckets.take("k", 0.0) == 0.0
    assert not buckets.offence("k", 0.1)  # never told to wait
    assert buckets.take("k", 0.1) > 0  # told: wait until 1.0
    assert buckets.offence("k", 0.2)
    for at in (0.3, 0.4, 0.5):
        assert buckets.take("k", at) > 0
        assert not buckets.offence("k", at)  # the same wait, ignored again: counted already
    assert buckets.take("k", 1.0) == 0.0  # waited as told
    assert buckets.take("k", 1.1) > 0  # a new wait, until 2.0
    assert buckets.offence("k", 1.2)  # ignoring it is a new offence


def test_an_addresss_refusal_is_told_to_the_caller_who_got_it() -> None:
    buckets = TokenBuckets(per_minute=60, burst=1)
    assert buckets.take("10.0.0.1", 0.0, caller="user:1") == 0.0
    assert buckets.take("10.0.0.1", 0.1, caller="user:1") > 0
    assert not buckets.offence("user:2", 0.2)  # someone else at the address was told nothing
    assert buckets.offence("user:1", 0.2)


def test_slots_are_limited_per_key_and_given_back() -> None:
    slots = Slots(2)
    assert slots.acquire("a") and slots.acquire("a") and not slots.acquire("a")
    assert slots.acquire("b")
    slots.release("a")
    assert slots.held("a") == 1 and slots.acquire("a")
