"""Worker keys, records and trust on both databases: what a check's outcome does to a
worker's status and to its owner's credit."""

from __future__ import annotations

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store.ledger import Ledger
from kakumei.store.workers import TrustPolicy, WorkerStatus, WorkerStore, recently_seen_workers
from kakumei.store.users import hash_key

REQUEST = GenerationRequest(prompt="x", width=64, height=64, steps=2, seed=1)


def complete_one(stores, workers: WorkerStore, worker) -> str:
    """Submit, claim as `worker`, complete: the job id."""
    from kakumei.store.jobs import NewJob

    user = stores.users.anonymous()
    job, _ = stores.jobs.submit(NewJob(user.id, REQUEST, "kakumei:tiny", request_cost(REQUEST, "kakumei:tiny")))
    lease = stores.jobs.claim(worker.lease_owner)
    assert lease is not None and lease.job.id == job.id
    assert stores.jobs.complete(job.id, lease.lease_id, [], seed=1, after=lambda tx: workers.on_completed(tx, worker, job.id))
    return job.id


def test_worker_keys_are_distinct_from_user_keys(stores) -> None:
    owner, user_key = stores.users.add("alice")
    workers = WorkerStore(stores.db)
    record, key = workers.add(owner.id, "gpu-1")
    assert key.startswith("kkw_") and key != user_key
    assert workers.by_key(key).name == "gpu-1" and workers.by_key(user_key) is None
    assert stores.users.by_key(key) is None
    assert record.owner == "alice" and record.status == WorkerStatus.NEW
    with stores.db.transaction(write=False) as tx:  # only the hash is kept
        assert tx.scalar("SELECT key_hash FROM workers WHERE id = ?", (record.id,)) == hash_key(key)


def test_a_new_workers_unchecked_work_waits_in_escrow_a_trusted_ones_is_paid(stores) -> None:
    owner, _ = stores.users.add("alice")
    workers = WorkerStore(stores.db, TrustPolicy(sample_rate=0.0, check_first=0), random=lambda: 0.5)
    worker, _ = workers.add(owner.id, "gpu-1")
    complete_one(stores, workers, worker)
    record = workers.get(worker.id)
    assert record.jobs_done == 1 and record.units_done > 0
    assert Ledger(stores.db).balance(owner.id) == 0 and workers.pending_credit(worker.id) == record.units_done
    assert workers.verification_counts(worker.id) == {}  # not sampled: nothing to check
    workers.set_status("gpu-1", WorkerStatus.TRUSTED)
    complete_one(stores, workers, worker)
    record = workers.get(worker.id)
    assert Ledger(stores.db).balance(owner.id) == record.units_paid == record.units_done / 2


def test_mismatches_make_suspect_then_quarantine_and_earn_nothing(stores) -> None:
    owner, _ = stores.users.add("mallory")
    workers = WorkerStore(stores.db, TrustPolicy(sample_rate=1.0, quarantine_after=2), random=lambda: 0.5)
    worker, _ = workers.add(owner.id, "cheat")
    for _ in range(2):
        complete_one(stores, workers, worker)
    statuses = []
    while (check := workers.claim_verification("v")) is not None:
        statuses.append(workers.finish_verification(check, distance=0.3, passed=False))
    assert statuses == [WorkerStatus.SUSPECT, WorkerStatus.QUARANTINED]
    assert Ledger(stores.db).balance(owner.id) == 0
    assert workers.verification_counts(worker.id) == {"failed": 2}


def test_matching_checks_pay_and_build_trust(stores) -> None:
    owner, _ = stores.users.add("bob")
    workers = WorkerStore(stores.db, TrustPolicy(sample_rate=1.0, trust_after=2), random=lambda: 0.5)
    worker, _ = workers.add(owner.id, "honest")
    complete_one(stores, workers, worker)
    assert Ledger(stores.db).balance(owner.id) == 0  # withheld until checked
    check = workers.claim_verification("v")
    assert workers.claim_verification("v") is None  # one check, one verifier
    assert workers.finish_verification(check, distance=0.001, passed=True) == WorkerStatus.NEW
    assert Ledger(stores.db).balance(owner.id) == 0  # in escrow until the worker is trusted
    assert workers.pending_credit(worker.id) == check.units
    complete_one(stores, workers, worker)
    assert workers.finish_verification(workers.claim_verification("v"), distance=0.0, passed=True) == WorkerStatus.TRUSTED
    assert Ledger(stores.db).balance(owner.id) == 2 * check.units and workers.pending_credit(worker.id) == 0


def test_a_failed_check_voids_escrow_and_queues_every_affected_job_again(stores) -> None:
    owner, _ = stores.users.add("mallory")
    workers = WorkerStore(stores.db, TrustPolicy(sample_rate=0.0, check_first=1), random=lambda: 0.5)
    worker, _ = workers.add(owner.id, "cheat")
    for _ in range(3):
        complete_one(stores, workers, worker)
    assert workers.verification_counts(worker.id) == {"pending": 1}  # the first, then a sample of none
    check = workers.claim_verification("v")
    assert workers.finish_verification(check, distance=0.3, passed=False) == WorkerStatus.QUARANTINED
    assert workers.pending_credit(worker.id) == 0
    assert workers.verification_counts(worker.id) == {"failed": 1, "pending": 2}  # re-run the other two
    while (check := workers.claim_verification("v")) is not None:
        workers.finish_verification(check, distance=0.0, passed=True)
    assert Ledger(stores.db).balance(owner.id) == 0  # a quarantined worker's credit stays void


def test_a_suspect_worker_has_every_job_checked(stores) -> None:
    owner, _ = stores.users.add("carol")
    workers = WorkerStore(stores.db, TrustPolicy(sample_rate=0.0), random=lambda: 0.99)
    worker, _ = workers.add(owner.id, "w")
    workers.set_status("w", WorkerStatus.SUSPECT)
    complete_one(stores, workers, worker)
    assert workers.verification_counts(worker.id) == {"pending": 1}
    assert Ledger(stores.db).balance(owner.id) == 0


def test_a_stopped_verifier_gives_its_checks_back(stores) -> None:
    owner, _ = stores.users.add("dave")
    workers = WorkerStore(stores.db, TrustPolicy(sample_rate=1.0), random=lambda: 0.5)
    worker, _ = workers.add(owner.id, "w")
    complete_one(stores, workers, worker)
    assert workers.claim_verification("v1") is not None
    assert workers.recover_verifier("v1") == 1
    assert workers.claim_verification("v2") is not None


def test_recently_seen_workers(stores) -> None:
    owner, _ = stores.users.add("erin")
    workers = WorkerStore(stores.db, clock=lambda: 100.0)
    worker, _ = workers.add(owner.id, "w")
    assert recently_seen_workers(stores.db, 50.0) == set()
    workers.seen(worker.id, {"models": ["kakumei:tiny"]})
    assert recently_seen_workers(stores.db, 50.0) == {worker.lease_owner}
    assert workers.get(worker.id).capabilities == {"models": ["kakumei:tiny"]}
