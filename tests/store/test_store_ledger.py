"""The credit ledger on both databases: balances across earn, spend and grant; spend once."""

from __future__ import annotations

import pytest

from kakumei.fairness.cost import request_cost
from kakumei.fairness.credits import MeritPolicy, merit_weight
from kakumei.schemas import GenerationRequest
from kakumei.store.jobs import NewJob
from kakumei.store.ledger import EARN_WORK, GRANT, SPEND_GENERATION, Ledger

REQUEST = GenerationRequest(width=64, height=64, steps=2)


def test_balance_is_the_sum_across_earn_spend_and_grant(stores) -> None:
    ledger = Ledger(stores.db)
    alice = stores.users.add("alice")[0].id
    ledger.add(alice, 10.0, EARN_WORK, job_id="j1", worker_id="w1")
    ledger.add(alice, 5.0, GRANT, note="welcome")
    cost = request_cost(REQUEST, "m")
    job, _ = stores.jobs.submit(NewJob(alice, REQUEST, "m", cost))
    lease = stores.jobs.claim("w")
    assert lease is not None and stores.jobs.complete(job.id, lease.lease_id, [])
    assert ledger.balance(alice) == pytest.approx(15.0 - cost)
    user = stores.users.get(alice)
    assert user is not None and user.balance == pytest.approx(ledger.balance(alice))
    reasons = [e.reason for e in ledger.entries(alice)]
    assert reasons == [SPEND_GENERATION, GRANT, EARN_WORK]
    # the running weight follows the balance
    assert user.weight == pytest.approx(merit_weight(MeritPolicy(), is_anonymous=False, balance=user.balance))
    assert user.weight > 1.0


def test_a_job_is_paid_for_once(stores) -> None:
    ledger = Ledger(stores.db)
    bob = stores.users.add("bob")[0].id
    job, _ = stores.jobs.submit(NewJob(bob, REQUEST, "m", 1.0))
    lease = stores.jobs.claim("w")
    assert lease is not None
    assert stores.jobs.complete(job.id, lease.lease_id, [])
    assert not stores.jobs.complete(job.id, lease.lease_id, [])
    assert ledger.balance(bob) == pytest.approx(-1.0)
    with pytest.raises(stores.db.integrity_errors):
        ledger.add(bob, -1.0, SPEND_GENERATION, job_id=job.id)
    assert ledger.balance(bob) == pytest.approx(-1.0)


def test_failed_jobs_cost_nothing_and_add_joins_the_callers_transaction(stores) -> None:
    ledger = Ledger(stores.db)
    carol = stores.users.add("carol")[0].id
    job, _ = stores.jobs.submit(NewJob(carol, REQUEST, "m", 1.0))
    lease = stores.jobs.claim("w")
    assert lease is not None and stores.jobs.fail(job.id, lease.lease_id, "out of memory")
    assert ledger.balance(carol) == 0.0
    with pytest.raises(RuntimeError):
        with stores.db.transaction() as tx:
            ledger.add(carol, 3.0, EARN_WORK, job_id="x", conn=tx)
            raise RuntimeError("the caller's work failed")
    assert ledger.balance(carol) == 0.0
    user = stores.users.get(carol)
    assert user is not None and user.balance == 0.0


def test_unknown_reason_is_refused(stores) -> None:
    with pytest.raises(ValueError, match="unknown ledger reason"):
        Ledger(stores.db).add(1, 1.0, "gift")


def test_admin_weight_overrides_merit(stores) -> None:
    ledger = Ledger(stores.db)
    dana = stores.users.add("dana", weight=3.0)[0].id
    ledger.add(dana, 500.0, GRANT)
    user = stores.users.get(dana)
    assert user is not None and user.weight == 3.0 and user.weight_override == 3.0
