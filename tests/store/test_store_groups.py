"""Fair share among people, as the store schedules it on both databases: network groups get
what one person gets, people share their group evenly, merit stands alone, idle time is not
banked at either level, a lost lease keeps the books, and caps count a group together."""

from __future__ import annotations

from collections import Counter

import pytest

from kakumei.fairness.cost import request_cost
from kakumei.fairness.groups import GroupPolicy, group_key
from kakumei.schemas import GenerationRequest
from kakumei.store.jobs import NewJob
from kakumei.store.quotas import (
    FREE_IN_GROUP,
    FREE_USERS_IN_GROUP,
    QueueFull,
    QueueLimits,
)
from tests.store.test_store_counters import assert_in_step
from tests.store.test_store_fairness import serve

SMALL = GenerationRequest(prompt="a fox", width=64, height=64, steps=2)
COST = request_cost(SMALL, "m")
POLICY = GroupPolicy()


def queue(stores, user_id: int, addr: str, n: int, *, alone: bool = False, policy: GroupPolicy = POLICY) -> None:
    key = group_key(user_id, addr, stands_alone=alone, policy=policy)
    stores.jobs.submit_many([NewJob(user_id, SMALL, "m", COST, client_addr=addr, group=key) for _ in range(n)])


def people(stores, prefix: str, n: int) -> list[int]:
    return [stores.users.add(f"{prefix}{i}")[0].id for i in range(n)]


def test_fifty_accounts_on_one_network_get_one_persons_share(stores) -> None:
    sybils = people(stores, "sybil", 50)
    flooder = stores.users.add("flooder")[0].id
    for i, uid in enumerate(sybils):
        queue(stores, uid, f"203.0.113.{i + 1}", 4)
    queue(stores, flooder, "198.51.100.7", 200)
    owners = serve(stores, 100)
    # two groups: the network of fifty, and the flooder's network of one
    assert 45 <= owners.count(flooder) <= 55
    # inside the network group, its turns are spread over its people
    inside = Counter(o for o in owners if o != flooder)
    assert max(inside.values()) <= 2


def test_with_network_groups_off_everyone_is_a_group_of_their_own(stores) -> None:
    off = GroupPolicy(enabled=False)
    sybils = people(stores, "sybil", 10)
    flooder = stores.users.add("flooder")[0].id
    for i, uid in enumerate(sybils):
        queue(stores, uid, f"203.0.113.{i + 1}", 5, policy=off)
    queue(stores, flooder, "198.51.100.7", 50, policy=off)
    owners = serve(stores, 44)
    assert owners.count(flooder) == 4  # one turn in eleven, as before groups
    with stores.db.transaction(write=False) as tx:
        assert tx.scalar("SELECT COUNT(*) AS n FROM fair_groups") == 11


def test_a_contributor_with_merit_stands_alone(stores) -> None:
    riders = people(stores, "rider", 10)
    giver = stores.users.add("giver")[0].id
    for i, uid in enumerate(riders):
        queue(stores, uid, f"203.0.113.{i + 1}", 5)
    queue(stores, giver, "203.0.113.200", 30, alone=True)  # same network, but merit
    owners = serve(stores, 40)
    assert 18 <= owners.count(giver) <= 22


def test_two_people_in_one_group_share_it_evenly(stores) -> None:
    a, b, c = people(stores, "p", 3)
    queue(stores, a, "203.0.113.1", 30)
    queue(stores, b, "203.0.113.2", 30)
    queue(stores, c, "198.51.100.1", 30)
    counts = Counter(serve(stores, 40))
    assert counts[c] == 20 and counts[a] == 10 and counts[b] == 10


def test_a_person_weight_divides_their_group_share(stores) -> None:
    light = stores.users.add("light", 0.5)[0].id  # e.g. a keyless caller's weight
    full, other = people(stores, "p", 2)
    queue(stores, light, "203.0.113.1", 30)
    queue(stores, full, "203.0.113.2", 30)
    queue(stores, other, "198.51.100.1", 30)
    counts = Counter(serve(stores, 60))
    assert counts[other] == 30
    assert counts[full] == pytest.approx(20, abs=1) and counts[light] == pytest.approx(10, abs=1)


def test_idle_time_is_not_banked_by_a_group(stores) -> None:
    a, b = people(stores, "p", 2)
    queue(stores, a, "203.0.113.1", 30)
    serve(stores, 10)  # b's network idles while a's is served
    queue(stores, b, "198.51.100.1", 10)
    owners = serve(stores, 10)
    assert owners.count(b) in (5, 6)  # alternation, not a run of ten for the newcomer


def test_idle_time_is_not_banked_by_a_person_in_their_group(stores) -> None:
    a, b, c = people(stores, "p", 3)
    queue(stores, a, "203.0.113.1", 30)
    queue(stores, c, "198.51.100.1", 30)
    serve(stores, 20)  # a gets ten turns alone in the group
    queue(stores, b, "203.0.113.2", 10)
    counts = Counter(serve(stores, 20))
    assert counts[c] == 10
    assert counts[b] in (5, 6) and counts[a] in (4, 5)


def test_a_person_coming_back_to_an_idle_group_cannot_bank_either(stores) -> None:
    """The group went idle: the next member starts where its members had reached, not 0."""
    a, b, c = people(stores, "p", 3)
    queue(stores, a, "203.0.113.1", 5)
    serve(stores, 5)
    queue(stores, b, "203.0.113.2", 10)  # new to the group while it idles
    queue(stores, a, "203.0.113.1", 10)  # a comes back: not behind b's whole queue
    queue(stores, c, "198.51.100.1", 40)
    owners = [o for o in serve(stores, 20) if o != c]
    assert abs(owners.count(a) - owners.count(b)) <= 1


def test_a_lost_lease_keeps_the_books_when_the_person_moved_group(stores) -> None:
    alice, bob = people(stores, "p", 2)
    queue(stores, alice, "203.0.113.1", 1)
    queue(stores, bob, "198.51.100.1", 3)
    lease = stores.jobs.claim("w")
    assert lease.job.user_id == alice
    network = stores.users.group(key="net:203.0.113.0/24")
    charged = network.virtual_counter
    # alice earns merit meanwhile and queues again, now in a group of her own
    queue(stores, alice, "203.0.113.1", 1, alone=True)
    own = stores.users.group(user_id=alice)
    assert own.key == f"user:{alice}"
    stores.clock.advance(31)
    assert stores.jobs.expire_leases() == 1
    assert_in_step(stores)
    back = stores.jobs.get(lease.job.id)
    assert back.state == "queued"
    # the network group got its charge back; the job queues with alice's others
    assert stores.users.group(key="net:203.0.113.0/24").virtual_counter == pytest.approx(charged - COST)
    assert stores.users.group(user_id=alice).queued_jobs == 2
    while (lease := stores.jobs.claim("w")) is not None:
        stores.jobs.complete(lease.job.id, lease.lease_id, [])
        assert_in_step(stores)


def test_a_lost_lease_in_the_same_group_gives_both_charges_back(stores) -> None:
    a, b = people(stores, "p", 2)
    queue(stores, a, "203.0.113.1", 2)
    queue(stores, b, "203.0.113.2", 2)
    before_group = stores.users.group(user_id=a).virtual_counter
    before_person = stores.users.get(a).virtual_counter
    lease = stores.jobs.claim("w")
    assert stores.jobs.release(lease.job.id, lease.lease_id)
    assert stores.users.group(user_id=a).virtual_counter == pytest.approx(before_group)
    assert stores.users.get(lease.job.user_id).virtual_counter == pytest.approx(before_person)
    assert_in_step(stores)


def test_free_tier_caps_count_a_network_groups_keys_together(stores) -> None:
    sybils = people(stores, "sybil", 10)
    limits = QueueLimits(own=100, free_in_group=5)
    accepted, refused = 0, []
    for i, uid in enumerate(sybils):
        addr = f"203.0.113.{i + 1}"
        try:
            stores.jobs.submit(NewJob(uid, SMALL, "m", COST, client_addr=addr,
                                      group=group_key(uid, addr, stands_alone=False)), limits)
            accepted += 1
        except QueueFull as full:
            refused.append(full.cap)
    assert accepted == 5 and set(refused) == {FREE_IN_GROUP}
    # another network is not held back by this one
    other = stores.users.add("other")[0].id
    stores.jobs.submit(NewJob(other, SMALL, "m", COST, group=group_key(other, "198.51.100.1", stands_alone=False)),
                       limits)


def test_free_tier_people_per_group_are_capped(stores) -> None:
    sybils = people(stores, "sybil", 6)
    limits = QueueLimits(free_users_in_group=2)
    outcomes = []
    for uid in sybils:
        try:
            stores.jobs.submit(NewJob(uid, SMALL, "m", COST, group="net:203.0.113.0/24"), limits)
            outcomes.append(None)
        except QueueFull as full:
            outcomes.append(full.cap)
    assert outcomes == [None, None] + [FREE_USERS_IN_GROUP] * 4
    # the two already queued may queue more
    stores.jobs.submit(NewJob(sybils[0], SMALL, "m", COST, group="net:203.0.113.0/24"), limits)


def test_queue_places_follow_the_claim_order(stores) -> None:
    """With no new arrivals, each queued job's place is the number of jobs the real claims
    serve before it (equal costs, so the estimate is exact here)."""
    a, b, c, d = people(stores, "p", 4)
    heavy = stores.users.add("heavy", 2.0)[0].id
    queue(stores, a, "203.0.113.1", 3)
    queue(stores, b, "203.0.113.2", 5)
    queue(stores, c, "198.51.100.1", 4)
    queue(stores, d, "192.0.2.1", 2)
    queue(stores, heavy, "192.0.2.2", 4)  # weight 2 inside d's group
    queued = [j for uid in (a, b, c, d, heavy) for j in stores.jobs.for_user(uid)]
    places = {j.id: stores.jobs.place(j.id)[0].jobs_ahead for j in queued}
    order = []
    while (lease := stores.jobs.claim("w")) is not None:
        order.append(lease.job.id)
        stores.jobs.complete(lease.job.id, lease.lease_id, [])
    actual = {job_id: n for n, job_id in enumerate(order)}
    misses = [abs(places[j] - actual[j]) for j in actual]
    assert max(misses) <= 1, (places, actual)
