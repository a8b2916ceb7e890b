"""A remote worker claims compatible jobs of several users as one batch over HTTP
(real uvicorn, both databases), and runs them in one engine batch."""

from __future__ import annotations

from kakumei.protocol import Capabilities
from kakumei.store.jobs import JobState
from kakumei.worker import Worker
from kakumei.worker.remote import HttpJobSource

JOB = {"width": 64, "height": 64, "steps": 2}


def test_remote_worker_runs_a_cross_user_batch(make_server, engine) -> None:
    server = make_server(local_worker=False, worker_batch_jobs=3, fairness_slack=100.0)
    svc = server.services
    owner, _ = svc.users.add("volunteer")
    _, worker_key = svc.workers.add(owner.id, "gpu-1")
    ids = []
    for i, name in enumerate(["ann", "bob", "cat", "dan"]):
        _, key = svc.users.add(name)
        with server.client(key) as user:
            reply = user.post("/api/v1/jobs", json={**JOB, "prompt": f"picture {i}", "cfg_scale": 4 + i, "seed": i})
            assert reply.status_code == 201, reply.text
            ids.append(reply.json()["id"])
    source = HttpJobSource(server.url, worker_key)
    try:
        source.hello()
        # the server caps a batch at its worker_batch_jobs (3), whatever the worker asks for
        worker = Worker(source, engine, "gpu-1", capabilities=Capabilities(), lease_seconds=source.lease_seconds,
                        max_batch_jobs=8)
        assert worker.run_one()
        states = [svc.jobs.get(i).state for i in ids]
        assert states == [JobState.SUCCEEDED] * 3 + [JobState.QUEUED]
        for job_id, seed in zip(ids[:3], range(3)):
            images = svc.images.for_job(job_id)
            assert [im.seed for im in images] == [seed]
        assert worker.run_one() and svc.jobs.get(ids[3]).state == JobState.SUCCEEDED
        assert source.claim_batch("gpu-1", Capabilities(), max_jobs=2, prefer_model=None, slack=0.0) == []
    finally:
        source.close()
