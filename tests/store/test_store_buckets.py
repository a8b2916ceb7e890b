"""Rate-limit buckets and open-stream places in the database or in Redis (SharedBuckets,
SharedSlots): the same rules as the in-memory ones, held across servers (separate connections
standing for separate processes), with takes at the same moment granting no more than the burst."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from kakumei.fairness.limits import TokenBuckets
from kakumei.store.buckets import SharedBuckets, SharedSlots
from kakumei.store.db import Database
from kakumei.store.redis_limits import RedisLimits

Make = Callable[[float, int], "TokenBuckets | SharedBuckets"]


@pytest.fixture(params=["memory", "database", "redis"])
def make(request: pytest.FixtureRequest, db: Database) -> Iterator[Make]:
    if request.param == "memory":
        yield lambda per_minute, burst: TokenBuckets(per_minute, burst)
    elif request.param == "database":
        yield lambda per_minute, burst: SharedBuckets(db, "key", per_minute, burst)
    else:
        place = request.getfixturevalue("redis_place")
        limits = RedisLimits(place.url, place.prefix)
        yield lambda per_minute, burst: SharedBuckets(limits, "key", per_minute, burst)
        limits.close()


def test_a_bucket_allows_a_burst_then_refills(make: Make) -> None:
    buckets = make(60, 3)
    assert [buckets.take("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", 0.0) == pytest.approx(1.0)  # one token a second
    assert buckets.take("other", 0.0) == 0.0  # keys are separate
    assert buckets.take("k", 1.0) == 0.0  # refilled
    assert buckets.take("k", 1.0) > 0
    assert buckets.take("k", 100.0) == 0.0
    assert [buckets.take("k", 100.0) for _ in range(3)][-1] > 0  # never more than the burst


def test_given_back_tokens_and_disabled_buckets(make: Make) -> None:
    buckets = make(1, 1)
    assert buckets.take("k", 0.0) == 0.0
    buckets.give_back("k", 0.0)
    assert buckets.take("k", 0.0) == 0.0
    off = make(0, 5)
    assert all(off.take("k", 0.0) == 0.0 for _ in range(100))


def test_a_burst_within_one_wait_is_one_offence(make: Make) -> None:
    buckets = make(60, 1)
    assert buckets.take("k", 0.0) == 0.0
    assert not buckets.offence("k", 0.1)  # never told to wait
    assert not buckets.ignored_retry_after("k", 0.1)
    assert buckets.take("k", 0.1) > 0  # told: wait until 1.0
    assert buckets.ignored_retry_after("k", 0.5)
    assert buckets.offence("k", 0.2)
    for at in (0.3, 0.4, 0.5):
        assert buckets.take("k", at) > 0
        assert not buckets.offence("k", at)  # the same wait, ignored again: counted already
    assert not buckets.ignored_retry_after("k", 1.0)
    assert buckets.take("k", 1.0) == 0.0  # waited as told
    assert buckets.take("k", 1.1) > 0  # a new wait, until 2.0
    assert buckets.offence("k", 1.2)  # ignoring it is a new offence


def test_an_addresss_refusal_is_told_to_the_caller_who_got_it(make: Make) -> None:
    buckets = make(60, 1)
    assert buckets.take("10.0.0.1", 0.0, caller="user:1") == 0.0
    assert buckets.take("10.0.0.1", 0.1, caller="user:1") > 0
    assert not buckets.offence("user:2", 0.2)  # someone else at the address was told nothing
    assert buckets.offence("user:1", 0.2)


@pytest.mark.parametrize("where", ["database", "redis"])
def test_takes_from_two_servers_at_once_grant_the_burst_and_no_more(
    request: pytest.FixtureRequest, where: str, database_url: str, db: Database
) -> None:
    if where == "database":
        servers: list = [Database(database_url), Database(database_url)]
    else:  # two clients, each with its own connections, as two servers have
        place = request.getfixturevalue("redis_place")
        servers = [RedisLimits(place.url, place.prefix), RedisLimits(place.url, place.prefix)]
    buckets = [SharedBuckets(s, "key", 0.001, 10) for s in servers]
    granted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def client(n: int) -> None:
        start.wait()
        for _ in range(4):
            ok = buckets[n % 2].take("user:1", 5.0) == 0.0
            with lock:
                granted.append(ok)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in servers:
        s.close()
    assert len(granted) == 32 and granted.count(True) == 10


def test_pruning_forgets_full_buckets_and_past_waits(db: Database) -> None:
    buckets = SharedBuckets(db, "ip", 60, 2)
    assert buckets.take("a", 0.0) == 0.0 and buckets.take("a", 0.0) == 0.0 and buckets.take("a", 0.0) > 0
    buckets.prune(1.5)  # not full yet, told to wait until 1.0: only the wait goes
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT count(*) AS n FROM rate_buckets") == 1
        assert tx.scalar("SELECT count(*) AS n FROM rate_told") == 0
    buckets.prune(10.0)
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT count(*) AS n FROM rate_buckets") == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stream_places_are_shared_given_back_and_expire_with_a_dead_server(database_url: str, db: Database) -> None:
    clock = Clock()
    other = Database(database_url)
    a, b = SharedSlots(db, 2, ttl=30, clock=clock), SharedSlots(other, 2, ttl=30, clock=clock)
    assert a.acquire("user:1") and b.acquire("user:1")
    assert not a.acquire("user:1") and not b.acquire("user:1")  # two in all, whichever server
    assert b.acquire("user:2")
    a.release("user:1")
    assert a.held("user:1") == 1 and a.acquire("user:1")
    clock.now += 20
    a.renew()  # a keeps its places; b (dead, say) renews nothing
    clock.now += 20
    assert a.held("user:1") == 1 and a.acquire("user:1")
    a.stop()
    assert a.held("user:1") == 0
    b._stop.set()
    other.close()
