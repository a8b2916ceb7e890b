"""The worker protocol over loopback HTTP (real uvicorn, both databases): keys, isolation,
late results refused, and an honest worker on another precision passing its checks."""

from __future__ import annotations


import pytest

from kakumei.protocol import Capabilities
from kakumei.server.verification import Verifier
from kakumei.store.ledger import Ledger
from kakumei.store.workers import WorkerStatus
from kakumei.worker import Worker
from kakumei.worker.remote import HttpJobSource, WorkerRefused

JOB = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 7}


def keys(server, owner: str = "alice", worker: str = "gpu-1") -> tuple[str, str]:
    """A user key and a worker key owned by that user."""
    svc = server.services
    user, user_key = svc.users.add(owner)
    _, worker_key = svc.workers.add(user.id, worker)
    return user_key, worker_key


def test_keys_do_not_cross(make_server) -> None:
    server = make_server(local_worker=False)
    user_key, worker_key = keys(server)
    with server.client(user_key) as user:
        job = user.post("/api/v1/jobs", json=JOB)
        assert job.status_code == 201
        refused = user.post("/api/v1/worker/claim", json={})
        assert refused.status_code == 403 and "cannot act as a worker" in refused.json()["detail"]
    with server.client(worker_key) as worker:
        refused = worker.post("/api/v1/jobs", json=JOB)
        assert refused.status_code == 403 and "worker key" in refused.json()["detail"]
        assert worker.get(f"/api/v1/jobs/{job.json()['id']}").status_code == 403
    with server.client("kkw_nonsense") as nobody:
        assert nobody.post("/api/v1/worker/claim", json={}).status_code == 401


def test_a_worker_sees_only_its_own_leases_and_late_results_are_refused(make_server, engine) -> None:
    server = make_server(local_worker=False)
    _, key_a = keys(server, "alice", "a")
    _, key_b = keys(server, "bob", "b")
    with server.client() as anyone:
        job_id = anyone.post("/api/v1/jobs", json=JOB).json()["id"]
    a, b = HttpJobSource(server.url, key_a), HttpJobSource(server.url, key_b)
    try:
        lease = a.claim("a", Capabilities())
        assert lease is not None and lease.job_id == job_id
        with server.client(key_b) as other:
            assert other.get(f"/api/v1/worker/jobs/{job_id}").status_code == 404
            stolen = other.post(f"/api/v1/worker/jobs/{job_id}/complete", json={"lease_id": lease.lease_id, "images": []})
            assert stolen.status_code == 409
        with server.client(key_a) as mine:
            assert mine.get(f"/api/v1/worker/jobs/{job_id}").status_code == 200
        # a's lease runs out (as if it stalled): the job goes back to the queue, b runs it.
        with server.services.db.transaction() as tx:
            tx.run("UPDATE jobs SET lease_expires_at = 0 WHERE id = ?", (job_id,))
        assert server.services.jobs.expire_leases() == 1
        assert Worker(b, engine, "b", capabilities=Capabilities()).run_one()
        late = engine.generate(lease.request_to_run())
        images = [Worker._image(i) for i in late.images]
        assert not a.complete(job_id, lease.lease_id, images, late.seed)
        with server.client(key_a) as mine:
            refused = mine.post(f"/api/v1/worker/jobs/{job_id}/complete", json={"lease_id": lease.lease_id, "images": []})
            assert refused.status_code == 409 and "no longer leased" in refused.json()["detail"]
        with server.client() as anyone:
            job = anyone.get(f"/api/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded" and job["attempts"] == 1 and len(job["images"]) == 1
    finally:
        a.close()
        b.close()


def test_bad_uploads_are_refused_with_a_sentence(make_server) -> None:
    server = make_server(local_worker=False)
    _, key = keys(server)
    with server.client() as anyone:
        job_id = anyone.post("/api/v1/jobs", json=JOB).json()["id"]
    source = HttpJobSource(server.url, key)
    try:
        lease = source.claim("w", Capabilities())
        with server.client(key) as worker:
            body = {"lease_id": lease.lease_id, "seed": 7, "images": [{"png_base64": "bm90IGEgcG5n", "seed": 7, "index": 0}]}
            reply = worker.post(f"/api/v1/worker/jobs/{job_id}/complete", json=body)
            assert reply.status_code == 422 and "not a readable" in reply.json()["detail"]
            reply = worker.post(f"/api/v1/worker/jobs/{job_id}/complete", json={"lease_id": lease.lease_id, "seed": 7, "images": []})
            assert reply.status_code == 422 and "images 0..0" in reply.json()["detail"]
            reply = worker.post(f"/api/v1/worker/jobs/{job_id}/complete", json={"lease_id": lease.lease_id, "seed": 8, "images": []})
            assert reply.status_code == 422 and "asks for seed 7" in reply.json()["detail"]
            # A failure goes back to the queue for another worker, counting an attempt.
            assert worker.post(f"/api/v1/worker/jobs/{job_id}/fail", json={"lease_id": lease.lease_id, "reason": "out of memory"}).status_code == 200
        job = server.services.jobs.get(job_id)
        assert job.state == "queued" and job.attempts == 1
        assert server.services.workers.by_name("gpu-1").jobs_failed == 1
    finally:
        source.close()


@pytest.fixture(scope="module")
def bf16_engine(tiny_settings):
    from kakumei.engine.pipeline import Engine

    return Engine(tiny_settings.model_copy(update={"dtype": "bfloat16"}))


@pytest.fixture(scope="module")
def fp32_engine(tiny_settings):
    from kakumei.engine.pipeline import Engine

    return Engine(tiny_settings.model_copy(update={"dtype": "float32"}))


def test_an_honest_worker_on_another_precision_passes_and_earns(make_server, bf16_engine, fp32_engine) -> None:
    server = make_server(local_worker=False, verify_sample_rate=1.0, verify_trust_after=2)
    _, key = keys(server, "volunteer", "bf16-box")
    with server.client() as anyone:
        ids = [anyone.post("/api/v1/jobs", json={**JOB, "seed": s, "batch_size": 2}).json()["id"] for s in (1, 2)]
    source = HttpJobSource(server.url, key)
    worker = Worker(source, bf16_engine, "bf16-box", capabilities=Capabilities(models=("kakumei:tiny",)))
    try:
        assert worker.run_one() and worker.run_one() and not worker.run_one()
    finally:
        source.close()
    svc = server.services
    owner = svc.users.by_name("volunteer")
    assert Ledger(svc.db).balance(owner.id) == 0  # held until the checks
    verifier = Verifier(svc.workers, svc.jobs, svc.images, fp32_engine, "trusted", max_distance=svc.settings.verify_max_distance)
    assert verifier.run_one() and verifier.run_one() and not verifier.run_one()
    record = svc.workers.by_name("bf16-box")
    assert record.status == WorkerStatus.TRUSTED
    assert svc.workers.verification_counts(record.id) == {"passed": 2}
    assert Ledger(svc.db).balance(owner.id) == pytest.approx(sum(svc.jobs.get(i).cost for i in ids))
    with server.client(svc.users.add("root")[1]) as nobody:
        assert nobody.get("/api/v1/admin/workers").status_code == 403


def test_a_quarantined_worker_is_refused(make_server) -> None:
    server = make_server(local_worker=False)
    _, key = keys(server)
    server.services.workers.set_status("gpu-1", WorkerStatus.QUARANTINED)
    source = HttpJobSource(server.url, key)
    try:
        with pytest.raises(WorkerRefused, match="quarantined"):
            source.claim("w", Capabilities())
    finally:
        source.close()
