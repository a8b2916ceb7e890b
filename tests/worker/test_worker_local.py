"""The worker loop against the real store (both databases) and the tiny-model Engine."""

from __future__ import annotations

import threading

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store.jobs import JobState, NewJob
from kakumei.server.job_source import StoreJobSource
from kakumei.worker import Worker

REQUEST = GenerationRequest(prompt="a cat", width=64, height=64, steps=2, seed=11, batch_size=2)


def submit(stores, request: GenerationRequest = REQUEST, model: str = "kakumei:tiny") -> str:
    user = stores.users.anonymous()
    return stores.jobs.submit(NewJob(user.id, request, model, request_cost(request, model)))[0].id


def test_worker_runs_a_job_to_its_images(stores, engine) -> None:
    job_id = submit(stores)
    worker = Worker(StoreJobSource(stores.jobs, stores.images), engine, "w1")
    assert worker.run_one()
    job = stores.jobs.get(job_id)
    assert job.state == JobState.SUCCEEDED and job.seed == 11
    images = stores.images.for_job(job_id)
    assert [(i.index, i.seed) for i in images] == [(0, 11), (1, 12)]
    assert all(i.path.read_bytes().startswith(b"\x89PNG") for i in images)
    assert not worker.run_one()


def test_engine_errors_fail_the_job_with_the_reason(stores, engine) -> None:
    job_id = submit(stores, model="./no/such/model")
    Worker(StoreJobSource(stores.jobs, stores.images), engine, "w1").run_one()
    job = stores.jobs.get(job_id)
    assert job.state == JobState.FAILED and "no/such/model" in job.error


def test_stopping_the_worker_gives_the_job_back(stores, engine) -> None:
    job_id = submit(stores, GenerationRequest(width=64, height=64, steps=150, n_iter=50))
    stop = threading.Event()
    source = StoreJobSource(stores.jobs, stores.images)
    original = source.heartbeat

    def heartbeat(job_id, lease_id, progress=None):
        reply = original(job_id, lease_id, progress)
        if progress is not None and progress.step is not None:
            stop.set()  # shut down once the job is really running
        return reply

    source.heartbeat = heartbeat  # type: ignore[method-assign]
    Worker(source, engine, "w1").run(stop)
    job = stores.jobs.get(job_id)
    assert job.state == JobState.QUEUED and job.attempts == 0


def test_one_log_line_per_job_and_none_while_idle(stores, engine, caplog) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    worker = Worker(StoreJobSource(stores.jobs, stores.images), engine, "w1")
    assert not worker.run_one() and not worker.busy
    assert [r for r in caplog.records if r.name.startswith("kakumei")] == []  # idle: nothing
    job_id = submit(stores)
    seen: list[bool] = []
    worker.engine = _Watching(engine, lambda: seen.append(worker.busy))
    assert worker.run_one() and not worker.busy and seen == [True]
    lines = [r.getMessage() for r in caplog.records if r.name == "kakumei.worker.loop"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"job {job_id}: 2 image(s) 64x64, 2 steps of kakumei:tiny in ") and lines[0].endswith(" s")
    failed = submit(stores, model="./no/such/model")
    worker.run_one()
    lines = [r.getMessage() for r in caplog.records if r.name == "kakumei.worker.loop"]
    assert len(lines) == 2 and lines[1].startswith(f"job {failed}: failed: ") and "no/such/model" in lines[1]


class _Watching:
    """The engine, noting the worker's state when a job starts."""

    def __init__(self, engine, note) -> None:
        self._engine, self._note = engine, note

    def generate(self, *args, **kwargs):
        self._note()
        return self._engine.generate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)
