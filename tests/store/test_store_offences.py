"""Offences and timeouts (Moderation) counted in the database and in Redis: the same rules,
an offender's count escalating within the window and starting again after it, a timeout never
shortened, a pardon forgetting it, and two servers counting one offender's offences together."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from kakumei.fairness.limits import TimeoutPolicy
from kakumei.store.db import Database
from kakumei.store.moderation import Moderation
from kakumei.store.redis_limits import RedisLimits
from kakumei.store.users import UserStore

POLICY = TimeoutPolicy(threshold=2, window=100.0, base=10.0, most=1000.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["database", "redis"])
def stores(request: pytest.FixtureRequest, db: Database) -> Iterator[list]:
    """What two servers count offences in: None (their database) or their own Redis client."""
    if request.param == "database":
        yield [None, None]
        return
    place = request.getfixturevalue("redis_place")
    limits = [RedisLimits(place.url, place.prefix), RedisLimits(place.url, place.prefix)]
    yield limits
    for one in limits:
        one.close()


def test_offences_escalate_within_the_window_and_a_pardon_forgets_them(db: Database, stores: list) -> None:
    clock = Clock()
    mod = Moderation(db, clock=clock, offences=stores[0])
    other = Moderation(db, clock=clock, offences=stores[1])  # another server
    assert mod.offence("10.0.0.1", "ignored Retry-After", POLICY) == 0.0  # first: no timeout yet
    assert mod.blocked_until("10.0.0.1") is None
    clock.now += 1
    until = other.offence("10.0.0.1", "blocked prompt", POLICY)  # the second, counted together
    assert until == pytest.approx(clock.now + 10)
    assert mod.blocked_until("10.0.0.1") == (pytest.approx(until), "blocked prompt")
    assert mod.blocked_until("10.0.0.2") is None
    clock.now += 1
    assert mod.offence("10.0.0.1", "again", POLICY) == pytest.approx(clock.now + 20)  # doubles
    clock.now += 30
    assert mod.blocked_until("10.0.0.1") is None  # served
    clock.now += 200  # past the window: counting starts again
    assert mod.offence("10.0.0.1", "later", POLICY) == 0.0
    # Users count apart from addresses; a pardon forgets theirs and ends the timeout.
    alice = UserStore(db).add("alice")[0].id
    assert mod.user_offence(alice, "x", POLICY) == 0.0 and mod.user_offence(alice, "y", POLICY) > clock.now
    assert other.user_blocked_until(alice) is not None
    assert other.pardon_user(alice, "alice", "root") and not other.pardon_user(alice, "alice", "root")
    assert mod.user_blocked_until(alice) is None
    assert mod.audit_log()[0].action == "pardon-user"


def test_a_timeout_is_never_shortened(db: Database, stores: list) -> None:
    clock = Clock()
    mod = Moderation(db, clock=clock, offences=stores[0])
    long = TimeoutPolicy(threshold=1, window=100.0, base=500.0, most=500.0)
    first = mod.offence("10.0.0.3", "a", long)
    assert first == pytest.approx(clock.now + 500)
    clock.now += 1
    assert mod.offence("10.0.0.3", "b", TimeoutPolicy(threshold=1, base=1.0, most=1.0)) == pytest.approx(first)


def test_offences_from_two_servers_at_once_are_each_counted(db: Database, stores: list, database_url: str) -> None:
    if stores[0] is None:  # two servers: two databases' connections
        servers = [Database(database_url), Database(database_url)]
        mods = [Moderation(s) for s in servers]
    else:
        servers = []
        mods = [Moderation(db, offences=s) for s in stores]
    bob, carol = UserStore(db).add("bob")[0].id, UserStore(db).add("carol")[0].id
    # 40 offences each: the 40th reaches bob's threshold, carol's is one more.
    at_40 = TimeoutPolicy(threshold=40, window=3600.0, base=60.0, most=60.0)
    at_41 = TimeoutPolicy(threshold=41, window=3600.0, base=60.0, most=60.0)
    start = threading.Barrier(8)

    def offend(n: int) -> None:
        start.wait()
        for _ in range(5):
            mods[n % 2].user_offence(bob, "x", at_40)
            mods[n % 2].user_offence(carol, "x", at_41)

    threads = [threading.Thread(target=offend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # None lost, none counted twice, whichever server counted them.
    assert mods[0].user_blocked_until(bob) is not None
    assert mods[0].user_blocked_until(carol) is None
    for s in servers:
        s.close()
