"""Merit and admission on both databases: contributors overtake free riders, floods from one
key or from many keys behind one address stay within their share, limits refill, bans and
timeouts survive a restart, and every refusal says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kakumei.config import Settings
from kakumei.fairness.cost import request_cost
from kakumei.fairness.limits import Refusal
from kakumei.schemas import GenerationRequest
from kakumei.server.admission import Admission
from kakumei.store.db import Database
from kakumei.store.jobs import JobStore
from kakumei.store.ledger import EARN_WORK, Ledger
from kakumei.store.moderation import Moderation
from kakumei.store.users import User

SMALL = GenerationRequest(prompt="a red fox", width=64, height=64, steps=2)
NO_RATES = {"key_rate_per_minute": 0, "ip_rate_per_minute": 0}


def admission(stores, tmp_path: Path, **overrides: Any) -> Admission:
    settings = Settings(home=tmp_path / "home", **overrides)
    return Admission(settings, stores.db, stores.jobs, Moderation(stores.db, clock=stores.clock), clock=stores.clock)


def submit(stores, adm: Admission, user: User, addr: str, request: GenerationRequest = SMALL) -> Refusal | None:
    fresh = stores.users.get(user.id)
    assert fresh is not None
    refusal = adm.check(fresh, addr, request)
    if refusal is None:
        from kakumei.store.jobs import NewJob

        stores.jobs.submit(NewJob(user.id, request, "m", request_cost(request, "m"), client_addr=addr,
                                  group=adm.group_key(fresh, addr)))
    return refusal


def assert_explained(refusal: Refusal | None) -> Refusal:
    assert refusal is not None
    assert refusal.status in (403, 429) and len(refusal.message) > 20 and "\n" not in refusal.message
    if refusal.status == 429:
        assert refusal.retry_after is not None and refusal.retry_after > 0
    return refusal


def jobs_before(stores, user_id: int) -> int:
    """Claim and complete until `user_id`'s first job comes up; return how many came first."""
    for n in range(1000):
        lease = stores.jobs.claim("w")
        assert lease is not None
        stores.jobs.complete(lease.job.id, lease.lease_id, [])
        if lease.job.user_id == user_id:
            return n
    raise AssertionError("never served")


def test_a_contributors_new_job_overtakes_a_free_riders_older_ones(stores, tmp_path) -> None:
    adm = admission(stores, tmp_path, **NO_RATES)
    rider = stores.users.add("rider")[0]
    giver = stores.users.add("giver")[0]
    Ledger(stores.db).add(giver.id, 200.0, EARN_WORK, job_id="w-1", worker_id="gpu-1")
    for _ in range(20):
        assert submit(stores, adm, rider, "10.0.0.1") is None
    assert submit(stores, adm, giver, "10.0.0.2") is None
    assert jobs_before(stores, giver.id) <= 1  # FIFO would make it wait for all 20
    # While both stay backlogged, merit shows as share: weight 1 + 4*200/300 vs 1.
    for _ in range(19):
        assert submit(stores, adm, giver, "10.0.0.2") is None
    served = [stores.jobs.claim("w") for _ in range(20)]
    giver_share = sum(lease.job.user_id == giver.id for lease in served if lease) / 20
    assert giver_share >= 0.7


def test_a_flood_from_one_key_is_capped_and_cannot_delay_another_user(stores, tmp_path) -> None:
    adm = admission(stores, tmp_path, max_queued_jobs=20, **NO_RATES)
    flooder = stores.users.add("flooder")[0]
    victim = stores.users.add("victim")[0]
    refusals = [submit(stores, adm, flooder, "10.0.0.1") for _ in range(100)]
    assert refusals.count(None) == 20
    refused = assert_explained(next(r for r in refusals if r is not None))
    assert refused.status == 429 and "20 jobs queued" in refused.message
    # on another network: the flooder's group is not the victim's
    assert submit(stores, adm, victim, "10.0.1.2") is None
    assert jobs_before(stores, victim.id) <= 1  # fair share with one other group: one job ahead


def test_many_keys_behind_one_address_count_as_few_users(stores, tmp_path) -> None:
    adm = admission(stores, tmp_path, free_users_per_ip=2, **NO_RATES)
    sybils = [stores.users.add(f"sybil{i}")[0] for i in range(10)]
    victim = stores.users.add("victim")[0]
    outcomes = [submit(stores, adm, s, "203.0.113.7") for s in sybils for _ in range(3)]
    assert outcomes.count(None) == 6  # two accounts, three jobs each
    assert "free-tier people on your network 203.0.113.0/24" in assert_explained(
        next(o for o in outcomes if o is not None)).message
    assert submit(stores, adm, victim, "198.51.100.1") is None
    assert jobs_before(stores, victim.id) <= 2


def test_rate_limits_per_key_and_per_address_refill(stores, tmp_path) -> None:
    adm = admission(stores, tmp_path, key_rate_per_minute=6, key_burst=2, ip_rate_per_minute=60, ip_burst=3)
    alice, bob = stores.users.add("alice")[0], stores.users.add("bob")[0]
    assert submit(stores, adm, alice, "10.0.0.1") is None
    assert submit(stores, adm, alice, "10.0.0.1") is None
    limited = assert_explained(submit(stores, adm, alice, "10.0.0.1"))
    assert "API key" in limited.message and limited.retry_after == pytest.approx(10.0)
    # bob's own key is fresh, but the network's bucket (3) is now spent, from another address
    # of it too: free-tier people of one network share it
    assert submit(stores, adm, bob, "10.0.0.2") is None
    assert "your network" in assert_explained(submit(stores, adm, bob, "10.0.0.9")).message
    stores.clock.advance(10.0)
    assert submit(stores, adm, alice, "10.0.0.1") is None


def test_free_tier_caps_follow_the_queue(stores, tmp_path) -> None:
    adm = admission(stores, tmp_path, free_busy_queue=4, **NO_RATES)
    big = GenerationRequest(prompt="a fox", width=1024, height=1024, steps=30)
    rider, giver, other = (stores.users.add(n)[0] for n in ("rider", "giver", "other"))
    Ledger(stores.db).add(giver.id, 10.0, EARN_WORK, job_id="w-1")
    for _ in range(4):
        assert submit(stores, adm, other, "10.0.0.3") is None
    busy = assert_explained(submit(stores, adm, rider, "10.0.0.1", big))
    assert busy.status == 429 and "the queue is busy" in busy.message
    assert submit(stores, adm, giver, "10.0.0.2", big) is None  # credit lifts the caps
    assert submit(stores, adm, rider, "10.0.0.1") is None  # a small job is still fine
    while (lease := stores.jobs.claim("w")) is not None:
        stores.jobs.complete(lease.job.id, lease.lease_id, [])
    assert submit(stores, adm, rider, "10.0.0.1", big) is None  # idle: relaxed
    huge = GenerationRequest(prompt="a fox", width=2048, height=2048, steps=30)
    assert assert_explained(submit(stores, adm, rider, "10.0.0.1", huge)).status == 403


def test_anonymous_visitors_are_capped_as_a_group(stores, tmp_path) -> None:
    adm = admission(stores, tmp_path, anonymous_max_queued=5, max_queued_jobs=2, **NO_RATES)
    # each keyless address is a person of its own
    results = [submit(stores, adm, stores.users.keyless_person(f"10.1.{i}.1", 0.5), f"10.1.{i}.1")
               for i in range(4) for _ in range(3)]
    assert results.count(None) == 5
    messages = {assert_explained(r).message.split(",")[0] for r in results if r is not None}
    assert any("anonymous visitors together" in m for m in messages)
    assert any("from your address" in m for m in messages)


def test_bans_and_timeouts_hold_across_a_restart(stores, tmp_path) -> None:
    adm = admission(stores, tmp_path, prompt_blocklist=["forbidden"], offence_threshold=3, **NO_RATES)
    mallory, eve = stores.users.add("mallory")[0], stores.users.add("eve")[0]
    bad = GenerationRequest(prompt="something FORBIDDEN", width=64, height=64, steps=2)
    first = assert_explained(submit(stores, adm, eve, "192.0.2.9", bad))
    assert "does not allow" in first.message and first.retry_after is None
    assert_explained(submit(stores, adm, eve, "192.0.2.9", bad))
    assert_explained(submit(stores, adm, eve, "192.0.2.9", bad))  # third offence: timed out
    adm.moderation.ban("user", str(mallory.id), "spam", "test")
    adm.moderation.ban("ip", "198.51.100.0/24", "scraping", "test", seconds=3600)
    # restart: a new connection, new admission, nothing in memory
    db = Database(stores.db.url)
    try:
        restarted = Admission(adm.settings, db, JobStore(db, stores.images, clock=stores.clock),
                              Moderation(db, clock=stores.clock), clock=stores.clock)
        timed_out = assert_explained(restarted.check(eve, "192.0.2.9", SMALL))
        assert "may submit again" in timed_out.message and timed_out.retry_after == pytest.approx(60.0)
        banned = assert_explained(restarted.check(mallory, "10.0.0.1", SMALL))
        assert "your account is banned" in banned.message and "spam" in banned.message
        ranged = assert_explained(restarted.check(eve, "198.51.100.77", SMALL))
        assert "your address is banned" in ranged.message and ranged.retry_after == pytest.approx(3600.0)
        # Banned twice over: the address's ban is the one told, as before.
        both = assert_explained(restarted.check(mallory, "198.51.100.78", SMALL))
        assert "your address is banned" in both.message and "scraping" in both.message
        assert restarted.moderation.ban_of("not an address", mallory.id).reason == "spam"
        assert restarted.moderation.ban_of(None, None) is None
        stores.clock.advance(61)
        assert restarted.check(eve, "192.0.2.9", SMALL) is None
        # the next offence within the window doubles the timeout
        restarted.check(eve, "192.0.2.9", bad)
        assert assert_explained(restarted.check(eve, "192.0.2.9", SMALL)).retry_after == pytest.approx(120.0)
        actions = [e.action for e in restarted.moderation.audit_log()]
        assert actions == ["ban-ip", "ban-user"]
    finally:
        db.close()


def test_free_tier_is_one_rule_for_the_caller_and_the_address_counts(stores, tmp_path) -> None:
    """An admin weight takes a user out of the free tier, the shared anonymous user included:
    the caller's own caps and the per-address free-tier counts follow the same rule."""
    adm = admission(stores, tmp_path, free_queued_per_ip=2, anonymous_max_queued=100, **NO_RATES)
    ledger = Ledger(stores.db, clock=stores.clock)
    anon = stores.users.anonymous()
    rider, giver, weighted, admin = (stores.users.add(n)[0] for n in ("rider", "giver", "weighted", "admin"))
    ledger.add(giver.id, 10.0, EARN_WORK, job_id="w-1")
    adm.moderation.set_weight(ledger, weighted.id, "weighted", 3.0, "test")
    adm.moderation.set_admin(admin.id, "admin", True, "test")
    adm.moderation.set_weight(ledger, anon.id, "anonymous", 2.0, "test")
    users = (anon, rider, giver, weighted, admin)
    for user in users:
        assert submit(stores, adm, user, "203.0.113.5") is None
    counted = adm.queue_state(stores.users.get(rider.id), "203.0.113.5").free_users_in_group
    assert {u.id for u in users if adm.free(stores.users.get(u.id))} == {rider.id} == counted
    # The anonymous visitors' admin weight stands them apart: their jobs at this address do
    # not use up the free-tier jobs of the registered free rider there.
    assert submit(stores, adm, anon, "203.0.113.5") is None
    assert submit(stores, adm, rider, "203.0.113.5") is None
    assert "free-tier people on your network" in assert_explained(
        submit(stores, adm, rider, "203.0.113.5")).message
