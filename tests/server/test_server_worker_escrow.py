"""Merit that cannot be faked, with real worker clients over loopback HTTP (both databases):
a fake worker's blank images are refused and its victims get real pictures from an honest
worker; a plausible cheat's credit waits in escrow and is voided when a re-run catches it,
and its jobs are re-run; an honest contributor is paid once trusted and gains weight; worker
keys are capped per person and per network."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kakumei.protocol import Capabilities, ImageReport
from kakumei.server.verification import Verifier
from kakumei.store.ledger import Ledger
from kakumei.store.workers import WorkerStatus
from kakumei.worker import Worker
from kakumei.worker.perceptual import png_distance
from kakumei.worker.remote import HttpJobSource, WorkerRefused

JOB = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2}
CAPS = Capabilities(models=("kakumei:tiny",))


def blank_png(size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (0, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def spread(png: bytes) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return int(pixels.max() - pixels.min())


def submit(server, seeds) -> list[str]:
    with server.client() as anyone:
        return [anyone.post("/api/v1/jobs", json={**JOB, "seed": s}).json()["id"] for s in seeds]


def worker_key(server, owner: str, name: str) -> tuple[str, str]:
    """A user over HTTP creates a worker key for their machine."""
    _, user_key = server.services.users.add(owner)
    with server.client(user_key) as user:
        made = user.post("/api/v1/me/workers", json={"name": name})
        assert made.status_code == 201, made.text
        return user_key, made.json()["key"]


def my_workers(server, user_key: str) -> dict:
    with server.client(user_key) as user:
        return {w["name"]: w for w in user.get("/api/v1/me/workers").json()["workers"]}


def verifier(server, engine) -> Verifier:
    svc = server.services
    return Verifier(svc.workers, svc.jobs, svc.images, engine, "trusted", max_distance=svc.settings.verify_max_distance)


def test_a_fake_worker_with_blank_images_earns_nothing_and_its_victims_get_real_pictures(make_server, engine) -> None:
    server = make_server(local_worker=False)
    ids = submit(server, (1, 2, 3))
    fake_owner, fake_key = worker_key(server, "mallory", "fake")
    _, honest_key = worker_key(server, "volunteer", "honest")
    fake = HttpJobSource(server.url, fake_key)
    try:
        lease = fake.claim("fake", CAPS)
        assert lease is not None
        blank = [ImageReport.of_png(blank_png(), seed=lease.request.seed, index=0)]
        assert not fake.complete(lease.job_id, lease.lease_id, blank, lease.request.seed)  # refused
        with server.client(fake_key) as raw:
            again = raw.post("/api/v1/worker/claim", json={})
            assert again.status_code == 403 and "quarantined" in again.json()["detail"], again.text
        with pytest.raises(WorkerRefused):
            fake.claim("fake", CAPS)
    finally:
        fake.close()
    refused = server.services.jobs.get(lease.job_id)
    assert refused.state == "queued" and refused.attempts == 0  # back, untouched
    honest = HttpJobSource(server.url, honest_key)
    try:
        runner = Worker(honest, engine, "honest", capabilities=CAPS)
        assert runner.run_one() and runner.run_one() and runner.run_one() and not runner.run_one()
    finally:
        honest.close()
    with server.client() as anyone:
        for job_id in ids:
            job = anyone.get(f"/api/v1/jobs/{job_id}").json()
            assert job["state"] == "succeeded"
            png = anyone.get(job["images"][0]["url"]).content
            assert spread(png) > 20  # a real picture, not the blank
    fake_row = my_workers(server, fake_owner)["fake"]
    assert fake_row["status"] == "quarantined" and fake_row["results_refused"] == 1
    assert fake_row["credit_pending"] == 0 and fake_row["credit_settled"] == 0 and fake_row["jobs_done"] == 0
    svc = server.services
    assert Ledger(svc.db).balance(svc.users.by_name("mallory").id) == 0


def test_a_plausible_cheat_waits_in_escrow_is_voided_and_its_jobs_are_run_again(make_server, engine) -> None:
    server = make_server(local_worker=False, verify_sample_rate=0.0)
    ids = submit(server, (11, 12, 13))
    owner_key, key = worker_key(server, "mallory", "liar")
    liar = HttpJobSource(server.url, key)
    try:
        for _ in ids:
            lease = liar.claim("liar", CAPS)
            # a real picture, but of another seed: it passes the cheap checks
            wrong = engine.generate(lease.request_to_run().model_copy(update={"seed": lease.request.seed + 1000}))
            reports = [ImageReport.of_png(i.png, seed=lease.request.seed, index=i.index) for i in wrong.images]
            assert liar.complete(lease.job_id, lease.lease_id, reports, lease.request.seed)
    finally:
        liar.close()
    svc = server.services
    costs = sum(svc.jobs.get(i).cost for i in ids)
    row = my_workers(server, owner_key)["liar"]
    assert row["credit_pending"] == pytest.approx(costs) and row["credit_settled"] == 0
    mallory = svc.users.by_name("mallory").id
    assert Ledger(svc.db).balance(mallory) == 0  # nothing paid while in escrow
    check = verifier(server, engine)
    assert check.run_one() and check.run_one() and check.run_one() and not check.run_one()
    row = my_workers(server, owner_key)["liar"]
    assert row["status"] == "quarantined" and row["credit_pending"] == 0 and row["credit_settled"] == 0
    assert Ledger(svc.db).balance(mallory) == 0
    # every victim now has the picture its request and seed give on a trusted machine
    for job_id in ids:
        job = svc.jobs.get(job_id)
        truth = engine.generate(job.request.model_copy(update={"model": job.model, "seed": job.seed}))
        stored = svc.images.for_job(job_id)[0].path.read_bytes()
        assert png_distance(stored, truth.images[0].png) < 0.01


def test_an_honest_contributor_is_paid_once_trusted_and_gains_weight(make_server, engine) -> None:
    server = make_server(local_worker=False, verify_sample_rate=0.0, verify_check_first=2, verify_trust_after=2)
    ids = submit(server, (21, 22, 23, 24))
    owner_key, key = worker_key(server, "volunteer", "gpu")
    source = HttpJobSource(server.url, key)
    runner = Worker(source, engine, "gpu", capabilities=CAPS)
    try:
        for _ in ids:
            assert runner.run_one()
        svc = server.services
        costs = sum(svc.jobs.get(i).cost for i in ids)
        row = my_workers(server, owner_key)["gpu"]
        assert row["credit_pending"] == pytest.approx(costs) and row["credit_settled"] == 0
        assert row["verifications"] == {"pending": 2}  # the first two, all checked
        check = verifier(server, engine)
        assert check.run_one() and check.run_one() and not check.run_one()
        row = my_workers(server, owner_key)["gpu"]
        assert row["status"] == "trusted" and row["credit_pending"] == 0
        assert row["credit_settled"] == pytest.approx(costs)
        with server.client(owner_key) as owner:
            me = owner.get("/api/v1/me").json()
        assert me["balance"] == pytest.approx(costs) and me["weight"] > 1.0
        # a trusted worker's unchecked job is paid at once
        (more,) = submit(server, (25,))
        assert runner.run_one()
        row = my_workers(server, owner_key)["gpu"]
        assert row["credit_settled"] == pytest.approx(costs + svc.jobs.get(more).cost)
    finally:
        source.close()


def test_worker_keys_are_capped_per_person_and_per_network(make_server) -> None:
    server = make_server(local_worker=False, worker_keys_per_user=2, worker_keys_per_network_day=3)
    _, alice = server.services.users.add("alice")
    _, bob = server.services.users.add("bob")
    with server.client(alice) as a, server.client(bob) as b:
        assert [a.post("/api/v1/me/workers", json={"name": f"a{i}"}).status_code for i in range(2)] == [201, 201]
        third = a.post("/api/v1/me/workers", json={"name": "a2"})
        assert third.status_code == 429 and "you have 2 worker keys" in third.json()["detail"]
        assert b.post("/api/v1/me/workers", json={"name": "b0"}).status_code == 201
        more = b.post("/api/v1/me/workers", json={"name": "b1"})
        assert more.status_code == 429 and "from your network 127.0.0.0/24" in more.json()["detail"], more.text


def test_a_trusted_remote_worker_checks_others_on_a_server_without_a_gpu(make_server, engine) -> None:
    server = make_server(local_worker=False, verify_sample_rate=0.0)
    (job_id,) = submit(server, (31,))
    owner_key, liar_key = worker_key(server, "mallory", "liar")
    _, checker_key = worker_key(server, "volunteer", "checker")
    assert server.services.workers.set_status("checker", WorkerStatus.TRUSTED)
    liar = HttpJobSource(server.url, liar_key)
    try:
        lease = liar.claim("liar", CAPS)
        wrong = engine.generate(lease.request_to_run().model_copy(update={"seed": lease.request.seed + 7}))
        reports = [ImageReport.of_png(i.png, seed=lease.request.seed, index=i.index) for i in wrong.images]
        assert liar.complete(lease.job_id, lease.lease_id, reports, lease.request.seed)
        # the liar, not trusted, is offered no checks (and never its own)
        with server.client(liar_key) as raw:
            assert raw.post("/api/v1/worker/checks/claim", json={}).status_code == 403
    finally:
        liar.close()
    source = HttpJobSource(server.url, checker_key)
    try:
        checker = Worker(source, engine, "checker", capabilities=CAPS)
        assert checker.run_one()  # no job queued: it re-runs the liar's job instead
        assert not checker.run_one()
    finally:
        source.close()
    row = my_workers(server, owner_key)["liar"]
    assert row["status"] == "quarantined" and row["credit_pending"] == 0 and row["verifications"] == {"failed": 1}
    svc = server.services
    job = svc.jobs.get(job_id)
    truth = engine.generate(job.request.model_copy(update={"model": job.model, "seed": job.seed}))
    assert png_distance(svc.images.for_job(job_id)[0].path.read_bytes(), truth.images[0].png) < 0.01
