"""The local worker runs compatible jobs of several users as one batch (both databases)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store.jobs import JobState, NewJob
from kakumei.server.job_source import StoreJobSource
from kakumei.worker import Worker

MODEL = "kakumei:tiny"


def submit(stores, user: str, **kw) -> str:
    request = GenerationRequest(**{"width": 64, "height": 64, "steps": 3, **kw})
    uid = stores.users.add(user)[0].id
    return stores.jobs.submit(NewJob(uid, request, MODEL, request_cost(request, MODEL)))[0].id


def batch_worker(stores, engine) -> Worker:
    return Worker(StoreJobSource(stores.jobs, stores.images), engine, "w1", max_batch_jobs=4, fairness_slack=100.0)


def pixels(stores, job_id: str) -> np.ndarray:
    image = stores.images.for_job(job_id)[0]
    return np.asarray(Image.open(io.BytesIO(image.path.read_bytes())).convert("RGB"), dtype=np.float64)


def test_one_claim_runs_compatible_jobs_of_three_users(stores, engine) -> None:
    ids = [
        submit(stores, "a", prompt="a red fox", cfg_scale=5, seed=1),
        submit(stores, "b", prompt="a blue whale", cfg_scale=8, seed=2),
        submit(stores, "c", prompt="a castle", seed=3),
    ]
    odd = submit(stores, "d", prompt="bigger", width=128)  # another size: not in this batch
    worker = batch_worker(stores, engine)
    assert worker.run_one()
    assert [stores.jobs.get(i).state for i in ids] == [JobState.SUCCEEDED] * 3
    assert stores.jobs.get(odd).state == JobState.QUEUED
    # each job's image is its own request's image, as it would be alone
    for job_id in ids:
        alone = engine.generate(stores.jobs.get(job_id).request.model_copy(update={"model": MODEL})).images[0]
        own = np.asarray(alone.image.convert("RGB"), dtype=np.float64)
        assert np.abs(pixels(stores, job_id) - own).mean() < 1.5
    assert worker.run_one() and stores.jobs.get(odd).state == JobState.SUCCEEDED


def test_cancelling_one_job_of_a_batch_keeps_the_others(stores, engine) -> None:
    keep = submit(stores, "a", prompt="keep me", seed=1, steps=6)
    drop = submit(stores, "b", prompt="drop me", seed=2, steps=6)
    source = StoreJobSource(stores.jobs, stores.images)
    original = source.heartbeat

    def heartbeat(job_id, lease_id, progress=None):
        if job_id == drop and progress is not None and progress.step == 2:
            stores.jobs.cancel(drop)  # the owner cancels while the batch runs
        return original(job_id, lease_id, progress)

    source.heartbeat = heartbeat  # type: ignore[method-assign]
    worker = Worker(source, engine, "w1", max_batch_jobs=4, fairness_slack=100.0, progress_interval=0.0)
    assert worker.run_one()
    assert stores.jobs.get(keep).state == JobState.SUCCEEDED
    assert stores.jobs.get(drop).state == JobState.CANCELLED
    assert stores.images.for_job(drop) == []


def test_affinity_prefers_the_loaded_model(stores, engine) -> None:
    engine.load(MODEL)  # the tiny model is loaded
    other = GenerationRequest(width=64, height=64, steps=2)
    uid = stores.users.add("x")[0].id
    first = stores.jobs.submit(NewJob(uid, other, "./not/loaded", request_cost(other, "./not/loaded")))[0].id
    second = submit(stores, "y")
    worker = Worker(StoreJobSource(stores.jobs, stores.images), engine, "w1", fairness_slack=100.0)
    assert worker.run_one()
    assert stores.jobs.get(second).state == JobState.SUCCEEDED  # the loaded model's job went first
    assert stores.jobs.get(first).state == JobState.QUEUED
