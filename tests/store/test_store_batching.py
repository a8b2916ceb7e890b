"""Cross-user batching and model affinity in the claim, on both databases."""

from __future__ import annotations

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store.jobs import NewJob

SHAPE = {"width": 64, "height": 64, "steps": 2}


def job(user_id: int, model: str = "m", **kw) -> NewJob:
    request = GenerationRequest(**{**SHAPE, **kw})
    return NewJob(user_id, request, model, request_cost(request, model))


def users(stores, names: str) -> list[int]:
    return [stores.users.add(n)[0].id for n in names]


def test_compatible_jobs_of_several_users_share_a_claim(stores) -> None:
    a, b, c = users(stores, "abc")
    stores.jobs.submit_many([job(a, prompt="fox", cfg_scale=5), job(a, prompt="fox 2")])
    stores.jobs.submit_many([job(b, prompt="whale", seed=3)])
    stores.jobs.submit_many([job(c, prompt="castle", cfg_scale=9)])
    # slack in job-times: 3 of the fairest job's charges
    leases = stores.jobs.claim_batch("w", max_jobs=4, slack=3)
    owners = [lease.job.user_id for lease in leases]
    # fair order, each user's own order kept: all tied at counter 0, so fewer jobs waiting
    # first (b, c: one each), then a, then a's second job
    assert owners == [b, c, a, a]
    assert len({lease.lease_id for lease in leases}) == 4
    for lease in leases:
        assert stores.jobs.complete(lease.job.id, lease.lease_id, [])


def test_incompatible_jobs_are_not_batched(stores) -> None:
    a, b, c = users(stores, "abc")
    stores.jobs.submit_many([job(a)])
    stores.jobs.submit_many([job(b, steps=3)])  # another loop shape
    stores.jobs.submit_many([job(c, model="other")])
    leases = stores.jobs.claim_batch("w", max_jobs=4, slack=100.0)
    assert [lease.job.user_id for lease in leases] == [a]


def test_batching_takes_only_a_users_next_job(stores) -> None:
    """b's next job is incompatible, so b's later compatible job must not jump it."""
    a, b = users(stores, "ab")
    stores.jobs.submit_many([job(a)])
    stores.jobs.submit_many([job(b, steps=3), job(b)])
    leases = stores.jobs.claim_batch("w", max_jobs=4, slack=100.0)
    assert [lease.job.user_id for lease in leases] == [a]


def test_batching_respects_the_slack_bound(stores) -> None:
    """A user whose counter is far ahead (a low weight: each job costs them much more share)
    is not pulled into a batch ahead of their fair turn."""
    a = stores.users.add("a", 1.0)[0].id
    b = stores.users.add("b", 0.1)[0].id
    stores.jobs.submit_many([job(a) for _ in range(3)])
    stores.jobs.submit_many([job(b) for _ in range(3)])
    for _ in range(2):  # a, then b: b's counter jumps by 10x the cost
        lease = stores.jobs.claim("w")
        stores.jobs.complete(lease.job.id, lease.lease_id, [])
    leases = stores.jobs.claim_batch("w", max_jobs=4, slack=0.5)
    assert [lease.job.user_id for lease in leases] == [a]
    wide = stores.jobs.claim_batch("w", max_jobs=4, slack=20)
    assert [lease.job.user_id for lease in wide][:2] == [a, b]


def test_affinity_prefers_the_loaded_model_within_slack(stores) -> None:
    a, b = users(stores, "ab")
    stores.jobs.submit_many([job(a, model="other")])
    stores.jobs.submit_many([job(b, model="loaded")])
    # a is fairest (older), but b's job is for the loaded model and within the slack
    leases = stores.jobs.claim_batch("w", prefer_model="loaded", slack=2)
    assert [lease.job.model for lease in leases] == ["loaded"]


def test_affinity_does_not_starve_other_models(stores) -> None:
    a, b = users(stores, "ab")
    stores.jobs.submit_many([job(a, model="other")])
    stores.jobs.submit_many([job(b, model="loaded") for _ in range(10)])
    served = []
    for _ in range(11):
        lease = stores.jobs.claim_batch("w", prefer_model="loaded", slack=1.5)[0]
        served.append(lease.job.model)
        stores.jobs.complete(lease.job.id, lease.lease_id, [])
    # the other model's job waits about slack job-times of b's work, not behind all 10
    assert served.index("other") <= 3
