"""Input images stored once by content hash, on both databases: jobs name them by
reference, reading a job decodes none, and jobs queued before migration 0005 move over."""

from __future__ import annotations

import base64
import json

import pytest
from imagehelpers import mask_b64, noise_b64

from kakumei import schemas
from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store import migrate as migrate_module
from kakumei.store.inputs import InputStore, MissingInput
from kakumei.protocol import Capabilities
from kakumei.store.jobs import NewJob
from kakumei.store.migrate import migrate
from kakumei.server.job_source import StoreJobSource
from kakumei.worker import Worker

BASE = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 5, "sampler_name": "Euler"}


def submitted(user_id: int, request: GenerationRequest, model: str = "m", **kw) -> NewJob:
    """A job as submission.py queues it: the request in stored form, its files alongside."""
    stored, files = request.stored_form()
    return NewJob(user_id=user_id, request=stored, model=model, cost=request_cost(request, model),
                  inputs=tuple(files.values()), **kw)


def input_rows(db) -> int:
    with db.transaction(write=False) as tx:
        return int(tx.scalar("SELECT COUNT(*) FROM input_images"))


def test_an_image_is_stored_once_and_read_back_as_base64(stores) -> None:
    inputs = InputStore(stores.db)
    a, b = noise_b64(32, 1), noise_b64(32, 2)
    raw_a, raw_b = base64.b64decode(a), base64.b64decode(b)
    with stores.db.transaction() as tx:
        refs = inputs.put_many(tx, [raw_a, raw_b, raw_a])
    with stores.db.transaction() as tx:
        again = inputs.put_many(tx, [raw_a])
    assert refs[0] == refs[2] == again[0] != refs[1]
    assert refs[0] == schemas.input_ref(raw_a) and schemas.is_input_ref(refs[0])
    assert input_rows(stores.db) == 2
    with stores.db.transaction(write=False) as tx:
        row = tx.one("SELECT bytes FROM input_images WHERE sha256 = ?", (refs[1].removeprefix("sha256:"),))
    assert row["bytes"] == len(raw_b)
    assert inputs.get_many([refs[1], refs[0]]) == {refs[0]: a, refs[1]: b}
    with pytest.raises(MissingInput):
        inputs.get_many(["sha256:" + "0" * 64])


def test_the_same_image_in_two_jobs_is_stored_once(stores) -> None:
    alice, _ = stores.users.add("alice")
    image = noise_b64(64, 3)
    request = GenerationRequest(**BASE, init_images=[image])
    first, _ = stores.jobs.submit(submitted(alice.id, request))
    second, _ = stores.jobs.submit(submitted(alice.id, request.model_copy(update={"prompt": "another"})))
    assert first.request.init_images == second.request.init_images
    assert first.request.input_refs() == [schemas.input_ref(base64.b64decode(image))]
    assert input_rows(stores.db) == 1
    with stores.db.transaction(write=False) as tx:
        rows = tx.all("SELECT request FROM jobs")
    assert all(image not in r["request"] for r in rows)


def test_reading_jobs_decodes_no_image(stores, monkeypatch) -> None:
    alice, _ = stores.users.add("alice")
    # 200 jobs, each with 4 large init images and a mask, as img2img and inpainting send them.
    images = [noise_b64(512, seed) for seed in range(4)]
    request = GenerationRequest(**{**BASE, "width": 512, "height": 512}, init_images=images, mask=mask_b64(512))
    stores.jobs.submit_many([submitted(alice.id, request) for _ in range(200)])
    calls = []
    real = schemas.decode_image_b64
    monkeypatch.setattr(schemas, "decode_image_b64", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    listed = stores.jobs.for_user(alice.id, limit=200)
    one = stores.jobs.get(listed[0].id)
    lease = stores.jobs.claim("w")
    assert len(listed) == 200 and one is not None and lease is not None
    assert all(j.request.mode == "inpaint" and j.request.input_refs() for j in listed)
    assert calls == []
    # A submission (base64) is still decoded and checked in full.
    GenerationRequest(**BASE, init_images=[noise_b64(64, 9)])
    assert calls == ["init_images[0]"]


def test_references_are_checked_for_form_only(stores) -> None:
    with pytest.raises(ValueError, match="not a stored image reference"):
        GenerationRequest(**BASE, init_images=["sha256:" + "A" * 64])
    with pytest.raises(ValueError, match="not a stored image reference"):
        GenerationRequest(**BASE, init_images=[noise_b64(64, 1)], mask="sha256:123")
    # A stored request's mask is not compared with its images again (both were at submission).
    ref = "sha256:" + "a" * 64
    assert GenerationRequest(**BASE, init_images=[ref], mask=ref).mode == "inpaint"
    with pytest.raises(ValueError, match="a mask must have the size"):
        GenerationRequest(**BASE, init_images=[noise_b64(64, 1)], mask=mask_b64(32))


def test_a_data_url_stays_inline_so_the_engine_sees_the_same_text(stores) -> None:
    # The engine records the sha256 of the base64 text it is given; a reference resolves to
    # the standard encoding, so text that is not exactly that stays in the request.
    image = noise_b64(32, 4)
    request = GenerationRequest(**BASE, init_images=["data:image/png;base64," + image, image])
    stored, files = request.stored_form()
    assert stored.init_images[0] == request.init_images[0]
    assert stored.init_images[1] == schemas.input_ref(base64.b64decode(image)) == stored.referenced().init_images[0]
    assert list(files) == [stored.init_images[1]]
    assert stored.with_inputs({stored.init_images[1]: image}) == request


def _migrate_without(db, monkeypatch, left_out: int) -> None:
    files = migrate_module.migration_files()
    with monkeypatch.context() as patch:
        patch.setattr(migrate_module, "migration_files", lambda: [f for f in files if f[0] != left_out])
        migrate(db)


@pytest.fixture
def legacy_db(database_url, monkeypatch):
    """A database without migration 0005, before input images were stored apart (the later
    migrations are in, so that today's JobStore can queue a job as 0004's did)."""
    from kakumei.store.db import Database

    db = Database(database_url)
    _migrate_without(db, monkeypatch, 5)
    yield db
    db.close()


def test_a_job_queued_before_0005_moves_over_and_yields_the_same_image(legacy_db, tmp_path, engine) -> None:
    from kakumei.store.images import ImageStore
    from kakumei.store.jobs import JobStore
    from kakumei.store.users import UserStore

    db = legacy_db
    images = ImageStore(db, tmp_path / "images")
    jobs = JobStore(db, images)
    user, _ = UserStore(db).add("alice")
    source_image = noise_b64(64, 5)
    request = GenerationRequest(**BASE, init_images=[source_image], mask=mask_b64(), denoising_strength=0.6)
    # As 0004's JobStore queued it: base64 inline in the request.
    legacy = NewJob(user_id=user.id, request=request, model="kakumei:tiny", cost=1.0, idempotency_key="k")
    job, _ = jobs.submit(legacy)
    assert job.request.init_images == [source_image]

    assert migrate(db) == [5]
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT request FROM jobs WHERE id = ?", (job.id,))
    assert source_image not in row["request"] and json.loads(row["request"])["mask"].startswith("sha256:")
    assert input_rows(db) == 2
    moved = jobs.get(job.id)
    assert moved is not None and moved.request.input_refs()
    # A retried submission with the same idempotency key still finds its job.
    replay, created = jobs.submit(submitted(user.id, request, model="kakumei:tiny", idempotency_key="k"))
    assert replay.id == job.id and not created

    worker = Worker(StoreJobSource(jobs, images), engine, "w1")
    assert worker.run_one()
    done = jobs.get(job.id)
    assert done is not None and done.state.value == "succeeded", done
    stored_png = images.for_job(job.id)[0].path.read_bytes()
    direct = engine.generate(request.model_copy(update={"model": "kakumei:tiny"})).images[0].png
    assert stored_png == direct


def test_a_job_queued_with_references_runs_like_the_base64_request(stores, engine) -> None:
    alice, _ = stores.users.add("alice")
    request = GenerationRequest(**BASE, init_images=[noise_b64(64, 6)], denoising_strength=0.5, model="kakumei:tiny")
    job, _ = stores.jobs.submit(submitted(alice.id, request, model="kakumei:tiny"))
    source = StoreJobSource(stores.jobs, stores.images)
    lease = source.claim("w1", Capabilities())
    assert lease is not None and lease.request == request
    assert stores.jobs.release(job.id, lease.lease_id)
    assert Worker(source, engine, "w1").run_one()
    png = stores.images.for_job(job.id)[0].path.read_bytes()
    assert png == engine.generate(request).images[0].png
