"""Fair sharing as the store schedules it, on both databases."""

from __future__ import annotations

import pytest

from kakumei.fairness.cost import request_cost
from kakumei.fairness.shares import jain_index
from kakumei.schemas import GenerationRequest
from kakumei.store.jobs import NewJob

SMALL = GenerationRequest(width=64, height=64, steps=2)


def jobs_for(user_id: int, n: int, request: GenerationRequest = SMALL) -> list[NewJob]:
    return [NewJob(user_id, request, "m", request_cost(request, "m")) for _ in range(n)]


def serve(stores, n: int) -> list[int]:
    """Claim and complete up to n jobs; return their owners in order."""
    owners = []
    for _ in range(n):
        lease = stores.jobs.claim("w")
        if lease is None:
            break
        assert stores.jobs.complete(lease.job.id, lease.lease_id, [])
        owners.append(lease.job.user_id)
    return owners


@pytest.mark.parametrize(
    ("submissions", "expected"),
    [
        # one user: FIFO
        ([("a", 3)], "aaa"),
        # equal costs: round robin; ties to the one with fewer jobs waiting, then the older user
        ([("a", 3), ("b", 3)], "ababab"),
        ([("a", 4), ("b", 1), ("c", 2)], "bcacaaa"),
    ],
)
def test_round_robin_interleaves_users(stores, submissions, expected) -> None:
    ids = {}
    for name, n in submissions:
        ids[name] = stores.users.add(name)[0].id
        stores.jobs.submit_many(jobs_for(ids[name], n))
    names = {v: k for k, v in ids.items()}
    assert "".join(names[o] for o in serve(stores, 100)) == expected


def test_newcomers_are_served_soon_despite_a_big_backlog(stores) -> None:
    a, b, c = (stores.users.add(n)[0].id for n in "abc")
    stores.jobs.submit_many(jobs_for(a, 200))
    serve(stores, 10)
    stores.jobs.submit_many(jobs_for(b, 5))
    stores.jobs.submit_many(jobs_for(c, 5))
    owners = serve(stores, 20)
    assert owners.count(b) == 5 and owners.count(c) == 5
    assert stores.users.get(a).queued_jobs == 200 - 10 - owners.count(a)


def test_idle_time_cannot_be_banked(stores) -> None:
    a, b = (stores.users.add(n)[0].id for n in "ab")
    stores.jobs.submit_many(jobs_for(a, 50))
    serve(stores, 40)
    # b was idle while a used the machine; b now starts level with a, not 40 jobs ahead.
    stores.jobs.submit_many(jobs_for(b, 20))
    owners = serve(stores, 20)
    assert 9 <= owners.count(b) <= 11


def test_long_run_shares_are_equal_in_compute_units(stores) -> None:
    """Backlogged users with different job sizes get equal compute, not equal job counts."""
    sizes = {"small": (64, 64), "medium": (128, 128), "large": (128, 256), "steps": (64, 64)}
    users = {}
    for name, (w, h) in sizes.items():
        request = GenerationRequest(width=w, height=h, steps=8 if name == "steps" else 2)
        users[name] = (stores.users.add(name)[0].id, request_cost(request, "m"))
        stores.jobs.submit_many(jobs_for(users[name][0], 400, request))
    cost_of = {uid: cost for uid, cost in users.values()}
    units = {uid: 0.0 for uid in cost_of}
    # Stop while everyone is still backlogged (the large user needs the fewest jobs).
    for owner in serve(stores, 500):
        units[owner] += cost_of[owner]
    assert all(stores.users.get(uid).queued_jobs > 0 for uid in cost_of)
    assert jain_index(list(units.values())) >= 0.99


def test_weight_gives_a_proportional_share(stores) -> None:
    heavy = stores.users.add("heavy", weight=2.0)[0].id
    light = stores.users.add("light", weight=1.0)[0].id
    stores.jobs.submit_many(jobs_for(heavy, 100) + jobs_for(light, 100))
    owners = serve(stores, 90)
    assert owners.count(heavy) == pytest.approx(60, abs=2)


def test_queue_position_follows_fair_share_not_arrival(stores) -> None:
    a, b = (stores.users.add(n)[0].id for n in "ab")
    stores.jobs.submit_many(jobs_for(a, 30))
    late = stores.jobs.submit(jobs_for(b, 1)[0])[0]
    place, eta = stores.jobs.place(late.id)
    # FIFO would say 30 jobs ahead; fair sharing serves b right after a's next job at most.
    assert place.jobs_ahead <= 1
    assert eta > 0
    second = stores.jobs.submit(jobs_for(b, 1)[0])[0]
    assert stores.jobs.place(second.id)[0].jobs_ahead <= 3
    assert serve(stores, 4).count(b) == 2
