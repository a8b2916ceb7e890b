"""Observed seconds per compute unit, on both databases: written when a job completes, per
model and worker class; cancelled jobs do not count; the cost factor and the ETA follow."""

from __future__ import annotations

import pytest

from kakumei.fairness.cost import calibrated_factor, request_cost
from kakumei.protocol import Capabilities, Progress
from kakumei.schemas import GenerationRequest
from kakumei.store import speeds
from kakumei.store.jobs import NewJob
from kakumei.store.workers import TrustPolicy, WorkerStore

# 512x512, 20 steps: one base unit a job.
ONE_UNIT = GenerationRequest(prompt="a fox", width=512, height=512, steps=20)
REF, XL = "sd15", "my-sdxl"


def trust(stores, *worker_ids: int) -> None:
    with stores.db.transaction() as tx:
        for wid in worker_ids:
            tx.run("UPDATE workers SET status = 'trusted' WHERE id = ?", (wid,))


def run_job(stores, user_id: int, model: str, seconds: float, worker: str = "w", *, cancel: bool = False) -> str:
    job = stores.jobs.submit(NewJob(user_id=user_id, request=ONE_UNIT, model=model,
                                    cost=request_cost(ONE_UNIT, model)))[0]
    lease = stores.jobs.claim(worker, Capabilities(models=(model,)))
    assert lease is not None and lease.job.id == job.id
    assert stores.jobs.heartbeat(job.id, lease.lease_id, Progress(step=1, total=20)).ok
    stores.clock.advance(seconds)
    if cancel:
        stores.jobs.cancel(job.id)
        assert stores.jobs.acknowledge_cancel(job.id, lease.lease_id)
    else:
        assert stores.jobs.complete(job.id, lease.lease_id, [])
    return job.id


def test_completed_jobs_make_a_moving_average_per_model_and_class(stores) -> None:
    alice, _ = stores.users.add("alice")
    for seconds in (2.0, 4.0):
        run_job(stores, alice.id, REF, seconds)
    run_job(stores, alice.id, XL, 9.0)
    observed = speeds.observed(stores.db)
    assert observed[(REF, "local")].samples == 2
    assert observed[(REF, "local")].seconds_per_unit == pytest.approx(3.0)  # the mean while few
    assert observed[(XL, "local")].seconds_per_unit == pytest.approx(9.0)
    for _ in range(40):
        run_job(stores, alice.id, REF, 10.0)
    # Past 1 / EMA_WEIGHT samples old figures fade: 40 samples of 10 s bring it close to 10.
    assert speeds.observed(stores.db)[(REF, "local")].seconds_per_unit == pytest.approx(10.0, abs=0.2)


def test_cancelled_jobs_are_not_samples(stores) -> None:
    alice, _ = stores.users.add("alice")
    run_job(stores, alice.id, REF, 5.0, cancel=True)
    assert speeds.observed(stores.db) == {}
    # Cancel asked, but the worker finished anyway: the run may have been cut short; left out.
    job = stores.jobs.submit(NewJob(user_id=alice.id, request=ONE_UNIT, model=REF, cost=1.0))[0]
    lease = stores.jobs.claim("w")
    stores.jobs.heartbeat(job.id, lease.lease_id)
    stores.clock.advance(5.0)
    stores.jobs.cancel(job.id)
    assert stores.jobs.complete(job.id, lease.lease_id, [])
    assert speeds.observed(stores.db) == {}


def test_a_remote_worker_counts_in_the_class_of_its_device(stores) -> None:
    alice, _ = stores.users.add("alice")
    workers = WorkerStore(stores.db, TrustPolicy())
    record, _ = workers.add(alice.id, "gpu-box")
    workers.seen(record.id, Capabilities(device="cuda").model_dump(mode="json"))
    plain, _ = workers.add(alice.id, "other-box")
    # A new worker's seconds are not believed yet: it could report any time it likes.
    run_job(stores, alice.id, REF, 50.0, worker=f"worker:{record.id}")
    assert speeds.observed(stores.db) == {}
    trust(stores, record.id, plain.id)
    run_job(stores, alice.id, REF, 2.0, worker=f"worker:{record.id}")
    run_job(stores, alice.id, REF, 6.0, worker=f"worker:{plain.id}")
    observed = speeds.observed(stores.db)
    assert observed[(REF, "remote:cuda")].seconds_per_unit == pytest.approx(2.0)
    assert observed[(REF, "remote")].seconds_per_unit == pytest.approx(6.0)


def test_the_factor_moves_after_min_samples_and_stays_clamped(stores) -> None:
    alice, _ = stores.users.add("alice")
    for _ in range(3):
        run_job(stores, alice.id, REF, 2.0)
        run_job(stores, alice.id, XL, 7.0)
    observed = speeds.observed(stores.db)
    assert calibrated_factor(XL, observed, min_samples=4, clamp=4.0) == 2.0  # too few yet
    assert calibrated_factor(XL, observed, min_samples=3, clamp=4.0) == pytest.approx(3.5)
    for _ in range(30):
        run_job(stores, alice.id, XL, 200.0)  # a worker claiming 100x the reference's time
    assert calibrated_factor(XL, speeds.observed(stores.db), min_samples=3, clamp=4.0) == pytest.approx(8.0)


def test_the_eta_follows_the_observed_reference_speed(stores) -> None:
    alice, _ = stores.users.add("alice")
    stores.jobs.calibration_min_samples = 3
    for _ in range(3):
        run_job(stores, alice.id, REF, 4.0)
    waiting = stores.jobs.submit(NewJob(user_id=alice.id, request=ONE_UNIT, model=XL, cost=3.0))[0]
    _, eta = stores.jobs.place(waiting.id)
    assert eta == pytest.approx(3.0 * 4.0)  # 3 units at 4 s a unit, nothing ahead
    for _ in range(40):
        run_job(stores, alice.id, REF, 1.0)
    waiting = stores.jobs.submit(NewJob(user_id=alice.id, request=ONE_UNIT, model=XL, cost=3.0))[0]
    _, eta = stores.jobs.place(waiting.id)
    # The first waiting job is still ahead: 6 units at about 1 s a unit now.
    assert eta == pytest.approx(6.0 * 1.0, abs=0.3)


def test_the_eta_uses_the_busy_workers_class_else_the_fastest(stores) -> None:
    alice, _ = stores.users.add("alice")
    stores.jobs.calibration_min_samples = 2
    workers = WorkerStore(stores.db, TrustPolicy())
    gpu, _ = workers.add(alice.id, "gpu-box")
    workers.seen(gpu.id, Capabilities(device="cuda").model_dump(mode="json"))
    cpu, _ = workers.add(alice.id, "cpu-box")
    workers.seen(cpu.id, Capabilities(device="cpu").model_dump(mode="json"))
    trust(stores, gpu.id, cpu.id)
    for _ in range(2):
        run_job(stores, alice.id, REF, 1.0, worker=f"worker:{gpu.id}")
        run_job(stores, alice.id, REF, 10.0, worker=f"worker:{cpu.id}")
    waiting = stores.jobs.submit(NewJob(user_id=alice.id, request=ONE_UNIT, model=REF, cost=2.0))[0]
    assert stores.jobs.place(waiting.id)[1] == pytest.approx(2.0)  # nobody busy: the fastest
    # Only the CPU box is working now: the job will run at its speed.
    busy = stores.jobs.submit(NewJob(user_id=alice.id, request=ONE_UNIT, model=REF, cost=1.0))[0]
    lease = stores.jobs.claim(f"worker:{cpu.id}")
    assert lease is not None and lease.job.id == waiting.id
    assert stores.jobs.place(busy.id)[1] == pytest.approx(10.0)


def test_before_enough_samples_the_eta_uses_recent_throughput(stores) -> None:
    alice, _ = stores.users.add("alice")
    run_job(stores, alice.id, REF, 4.0)  # one sample, min_samples is 20
    waiting = stores.jobs.submit(NewJob(user_id=alice.id, request=ONE_UNIT, model=REF, cost=1.0))[0]
    _, eta = stores.jobs.place(waiting.id)
    assert eta == pytest.approx(4.0)  # recent throughput: 1 unit in 4 s
