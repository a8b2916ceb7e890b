"""The queue's lifecycle on both databases: submit, claim, heartbeat, complete, leases."""

from __future__ import annotations

import threading

import pytest

from kakumei.fairness.cost import request_cost
from kakumei.protocol import Capabilities, Progress
from kakumei.schemas import GenerationRequest
from kakumei.store.images import ImageResult
from kakumei.store.jobs import IdempotencyConflict, JobState, NewJob
from kakumei.store.migrate import migrate

REQUEST = GenerationRequest(prompt="a fox", width=64, height=64, steps=2)


def new_job(user_id: int, request: GenerationRequest = REQUEST, model: str = "m", **kw) -> NewJob:
    return NewJob(user_id=user_id, request=request, model=model, cost=request_cost(request, model), **kw)


def test_migrations_apply_once_and_create_the_anonymous_user(stores) -> None:
    assert migrate(stores.db) == []
    anon = stores.users.anonymous()
    assert anon.is_anonymous and anon.name == "anonymous"


def test_api_keys_are_stored_hashed(stores) -> None:
    user, key = stores.users.add("alice")
    assert stores.users.by_key(key) == user
    assert stores.users.by_key(key + "x") is None
    with stores.db.transaction(write=False) as tx:
        stored = tx.scalar("SELECT key_hash FROM api_keys WHERE user_id = ?", (user.id,))
    assert key not in stored


def test_idempotency_key_creates_one_job(stores) -> None:
    alice, _ = stores.users.add("alice")
    bob, _ = stores.users.add("bob")
    first, created = stores.jobs.submit(new_job(alice.id, idempotency_key="k1"))
    again, created_again = stores.jobs.submit(new_job(alice.id, idempotency_key="k1"))
    other, other_created = stores.jobs.submit(new_job(bob.id, idempotency_key="k1"))
    assert created and not created_again and other_created
    assert first.id == again.id != other.id
    assert stores.users.get(alice.id).queued_jobs == 1
    with pytest.raises(IdempotencyConflict):
        stores.jobs.submit(new_job(alice.id, GenerationRequest(prompt="other", width=64, height=64), idempotency_key="k1"))


def test_claim_takes_priority_then_age_within_a_user(stores) -> None:
    alice, _ = stores.users.add("alice")
    old = stores.jobs.submit(new_job(alice.id))[0]
    young = stores.jobs.submit(new_job(alice.id))[0]
    urgent = stores.jobs.submit(new_job(alice.id, priority=5))[0]
    order = [stores.jobs.claim("w").job.id for _ in range(3)]
    assert order == [urgent.id, old.id, young.id]
    assert stores.jobs.claim("w") is None


def test_claim_only_gives_jobs_the_worker_can_run(stores) -> None:
    alice, _ = stores.users.add("alice")
    big = GenerationRequest(width=1024, height=1024, steps=2)
    xl = stores.jobs.submit(new_job(alice.id, big, model="sdxl"))[0]
    small = stores.jobs.submit(new_job(alice.id, model="sd15"))[0]
    assert stores.jobs.claim("w", Capabilities(models=("flux",))) is None
    assert stores.jobs.claim("w", Capabilities(max_pixels=512 * 512)).job.id == small.id
    assert stores.jobs.claim("w", Capabilities(models=("sd15",))) is None
    assert stores.jobs.claim("w", Capabilities(models=("sdxl", "sd15"))).job.id == xl.id


def test_a_job_completes_exactly_once(stores) -> None:
    alice, _ = stores.users.add("alice")
    job = stores.jobs.submit(new_job(alice.id))[0]
    lease = stores.jobs.claim("w")
    assert stores.jobs.heartbeat(job.id, lease.lease_id, Progress(step=1, total=2)).ok
    assert stores.jobs.get(job.id).state == JobState.RUNNING
    files = stores.images.write_files(job.id, [ImageResult(png=b"png", seed=7, index=0)])
    assert stores.jobs.complete(job.id, lease.lease_id, files, seed=7)
    again = stores.images.write_files(job.id, [ImageResult(png=b"png", seed=7, index=0)])
    assert not stores.jobs.complete(job.id, lease.lease_id, again, seed=7)
    assert not again[0].path.exists()
    assert [i.id for i in stores.images.for_job(job.id)] == [files[0].id]
    done = stores.jobs.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.seed == 7
    kinds = [e.kind for e in stores.jobs.events(job.id)]
    assert kinds == ["queued", "leased", "started", "progress", "succeeded"]


def test_expired_lease_requeues_then_fails_after_max_attempts(stores) -> None:
    alice, _ = stores.users.add("alice")
    job = stores.jobs.submit(new_job(alice.id))[0]
    counter_before = stores.users.get(alice.id).virtual_counter
    for attempt in (1, 2):
        lease = stores.jobs.claim("w")
        assert stores.users.get(alice.id).virtual_counter > counter_before
        stores.clock.advance(31)
        assert stores.jobs.expire_leases() == 1
        back = stores.jobs.get(job.id)
        assert back.state == JobState.QUEUED and back.attempts == attempt
        # The owner is not charged for a run that was lost.
        assert stores.users.get(alice.id).virtual_counter == pytest.approx(counter_before)
        # The stale lease can change nothing any more.
        assert not stores.jobs.heartbeat(job.id, lease.lease_id).ok
        assert not stores.jobs.complete(job.id, lease.lease_id, [])
    stores.jobs.claim("w")
    stores.clock.advance(31)
    stores.jobs.expire_leases()
    failed = stores.jobs.get(job.id)
    assert failed.state == JobState.FAILED and failed.attempts == 3
    assert "3 times" in failed.error


def test_heartbeats_keep_the_lease(stores) -> None:
    alice, _ = stores.users.add("alice")
    job = stores.jobs.submit(new_job(alice.id))[0]
    lease = stores.jobs.claim("w")
    for _ in range(3):
        stores.clock.advance(20)
        assert stores.jobs.heartbeat(job.id, lease.lease_id).ok
        assert stores.jobs.expire_leases() == 0
    assert stores.jobs.get(job.id).state == JobState.RUNNING


def test_recover_worker_requeues_its_jobs_at_once(stores) -> None:
    alice, _ = stores.users.add("alice")
    mine = stores.jobs.submit(new_job(alice.id))[0]
    theirs = stores.jobs.submit(new_job(alice.id))[0]
    stores.jobs.claim("local")
    stores.jobs.claim("remote")
    assert stores.jobs.recover_worker("local") == 1
    assert stores.jobs.get(mine.id).state == JobState.QUEUED
    assert stores.jobs.get(theirs.id).state == JobState.LEASED


def test_cancel_works_in_every_state(stores) -> None:
    alice, _ = stores.users.add("alice")
    queued = stores.jobs.submit(new_job(alice.id))[0]
    running = stores.jobs.submit(new_job(alice.id))[0]
    assert stores.jobs.cancel(queued.id).state == JobState.CANCELLED
    assert stores.users.get(alice.id).queued_jobs == 1
    lease = stores.jobs.claim("w")
    assert lease.job.id == running.id
    stores.jobs.heartbeat(running.id, lease.lease_id, Progress(step=1, total=2))
    asked = stores.jobs.cancel(running.id)
    assert asked.state == JobState.RUNNING and asked.cancel_requested
    assert stores.jobs.heartbeat(running.id, lease.lease_id).cancel_requested
    assert stores.jobs.acknowledge_cancel(running.id, lease.lease_id)
    assert stores.jobs.get(running.id).state == JobState.CANCELLED
    assert stores.jobs.cancel(running.id).state == JobState.CANCELLED
    assert stores.jobs.cancel("no-such-job") is None


def test_cancelled_job_whose_worker_died_ends_cancelled(stores) -> None:
    alice, _ = stores.users.add("alice")
    job = stores.jobs.submit(new_job(alice.id))[0]
    stores.jobs.claim("w")
    stores.jobs.cancel(job.id)
    stores.clock.advance(31)
    stores.jobs.expire_leases()
    assert stores.jobs.get(job.id).state == JobState.CANCELLED


def test_release_gives_the_job_back_without_an_attempt(stores) -> None:
    alice, _ = stores.users.add("alice")
    job = stores.jobs.submit(new_job(alice.id))[0]
    lease = stores.jobs.claim("w")
    assert stores.jobs.release(job.id, lease.lease_id)
    back = stores.jobs.get(job.id)
    assert back.state == JobState.QUEUED and back.attempts == 0


def test_concurrent_claimers_never_share_a_job(stores) -> None:
    users = [stores.users.add(f"u{i}")[0] for i in range(4)]
    stores.jobs.submit_many([new_job(users[i % 4].id) for i in range(60)])
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (lease := stores.jobs.claim(name)) is not None:
            assert stores.jobs.complete(lease.job.id, lease.lease_id, [])
            with lock:
                claimed.append(lease.job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 60 == len(set(claimed))
    assert all(u.queued_jobs == 0 for u in stores.users.list())


def test_user_listing_is_newest_first(stores) -> None:
    alice, _ = stores.users.add("alice")
    jobs = [stores.jobs.submit(new_job(alice.id))[0].id for _ in range(3)]
    assert [j.id for j in stores.jobs.for_user(alice.id)] == jobs[::-1]
