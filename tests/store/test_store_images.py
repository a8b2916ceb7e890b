"""Image bytes and their rows on both databases, in files, in the database's chunks and in a
bucket: the bytes exist before the transaction whose row names them commits, and a report that
does not commit leaves no bytes behind."""

from __future__ import annotations

import uuid

import pytest

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store.images import (
    CHUNK_BYTES,
    ImageResult,
    ImageStore,
    PendingImage,
    StoredImage,
)
from kakumei.store.jobs import JobState, NewJob
from kakumei.store.workers import TrustPolicy, Verification, WorkerStatus, WorkerStore

# Every test runs with images in files and with images in the database.
pytestmark = pytest.mark.parametrize("stores", ["files", "database", "s3"], indirect=True)

REQUEST = GenerationRequest(prompt="a fox", width=64, height=64, steps=2, seed=1)
PNG = ImageResult(png=b"worker png", seed=1, index=0, infotext="worker")


def leased(stores, worker_id: str = "w"):
    user = stores.users.add("alice")[0]
    stores.jobs.submit(NewJob(user.id, REQUEST, "m", request_cost(REQUEST, "m")))
    lease = stores.jobs.claim(worker_id)
    assert lease is not None
    return lease


def completed(stores, pngs: list[bytes]) -> list[PendingImage]:
    """One finished job per PNG, each of a new user: their images as written."""
    made = []
    for png in pngs:
        user = stores.users.add(f"maker-{uuid.uuid4().hex[:8]}")[0]
        stores.jobs.submit(NewJob(user.id, REQUEST, "m", request_cost(REQUEST, "m")))
        lease = stores.jobs.claim("w")
        files = stores.images.write_files(lease.job.id, [ImageResult(png=png, seed=1, index=0)])
        assert stores.jobs.complete(lease.job.id, lease.lease_id, files, seed=1)
        made.extend(files)
    return made


def test_files_are_written_before_the_completing_transaction_commits(stores) -> None:
    lease = leased(stores)
    files = stores.images.write_files(lease.job.id, [PNG])
    seen = []

    def inside(tx) -> None:  # runs in the completing transaction, before its commit
        row = tx.one("SELECT path FROM images WHERE id = ?", (files[0].id,))
        seen.append((row["path"], files[0].path.read_bytes()))

    assert stores.jobs.complete(lease.job.id, lease.lease_id, files, seed=1, after=inside)
    assert seen == [(str(files[0].path), b"worker png")]
    assert stores.images.get(files[0].id).path.read_bytes() == b"worker png"


@pytest.mark.parametrize("report", ["complete", "acknowledge_cancel"])
def test_a_report_on_a_lost_lease_deletes_its_files(stores, report: str) -> None:
    lease = leased(stores)
    if report == "acknowledge_cancel":  # the answer to a cancel
        stores.jobs.cancel(lease.job.id)
    stores.clock.advance(31)
    stores.jobs.expire_leases()
    files = stores.images.write_files(lease.job.id, [PNG])
    assert not getattr(stores.jobs, report)(lease.job.id, lease.lease_id, files)
    assert not files[0].path.exists()
    assert stores.images.for_job(lease.job.id) == []


@pytest.mark.parametrize("report", ["complete", "acknowledge_cancel"])
def test_a_report_whose_transaction_fails_deletes_its_files(stores, monkeypatch, report: str) -> None:
    lease = leased(stores)
    files = stores.images.write_files(lease.job.id, [PNG])
    original = stores.jobs._spend

    def failing(tx, *args) -> None:  # the image rows are in (written before), then the transaction fails
        assert tx.scalar("SELECT count(*) AS n FROM images WHERE job_id = ?", (lease.job.id,)) == 1
        original(tx, *args)
        raise RuntimeError("connection lost")

    monkeypatch.setattr(stores.jobs, "_spend", failing)
    with pytest.raises(RuntimeError):
        getattr(stores.jobs, report)(lease.job.id, lease.lease_id, files)
    assert not files[0].path.exists()
    assert stores.images.for_job(lease.job.id) == []
    assert stores.jobs.get(lease.job.id).state == JobState.LEASED


def mismatched(stores) -> tuple[WorkerStore, Verification, list[StoredImage]]:
    """A remote worker's completed job, sampled for a check, and its image row."""
    owner = stores.users.add("owner")[0]
    workers = WorkerStore(stores.db, TrustPolicy(sample_rate=1.0, quarantine_after=2), random=lambda: 0.5)
    worker, _ = workers.add(owner.id, "gpu-1")
    user = stores.users.anonymous()
    job, _ = stores.jobs.submit(NewJob(user.id, REQUEST, "m", request_cost(REQUEST, "m")))
    lease = stores.jobs.claim(worker.lease_owner)
    files = stores.images.write_files(job.id, [PNG])
    assert stores.jobs.complete(job.id, lease.lease_id, files, seed=1,
                                after=lambda tx: workers.on_completed(tx, worker, job.id))
    check = workers.claim_verification("v")
    assert check is not None and check.job_id == job.id
    return workers, check, stores.images.for_job(job.id)


CORRECTED = {0: (b"verifier png", "verifier", {"seed": 1})}


def test_a_verifiers_replacement_is_written_before_its_row_commits(stores, monkeypatch) -> None:
    workers, check, [before] = mismatched(stores)
    original = ImageStore.replace_rows
    seen = []

    def replace_rows(tx, replacements):
        seen.extend(r.path.read_bytes() for r in replacements)  # in the transaction, before commit
        return original(tx, replacements)

    monkeypatch.setattr(ImageStore, "replace_rows", staticmethod(replace_rows))
    status = workers.finish_verification(check, distance=0.4, passed=False, corrected=CORRECTED)
    assert status == WorkerStatus.SUSPECT and seen == [b"verifier png"]
    [after] = stores.images.for_job(check.job_id)
    assert after.id == before.id and after.infotext == "verifier"  # same id, so the same URL
    assert after.path.read_bytes() == b"verifier png"
    assert not before.path.exists()  # the worker's file, named by no row now, is gone


def test_a_failed_verification_transaction_keeps_the_old_image(stores, monkeypatch) -> None:
    workers, check, [before] = mismatched(stores)
    written = []
    original = ImageStore.replace_rows

    def replace_rows(tx, replacements):
        written.extend(r.path for r in replacements)
        original(tx, replacements)
        raise RuntimeError("connection lost")

    monkeypatch.setattr(ImageStore, "replace_rows", staticmethod(replace_rows))
    with pytest.raises(RuntimeError):
        workers.finish_verification(check, distance=0.4, passed=False, corrected=CORRECTED)
    [after] = stores.images.for_job(check.job_id)
    assert after == before and after.path.read_bytes() == b"worker png"
    assert written and not any(p.exists() for p in written)



def test_images_stored_before_move_into_the_bucket(stores, request) -> None:
    """A server started with a bucket moves what it wrote to files or to chunks there; what
    is already in the bucket stays as it is."""
    place = request.getfixturevalue("s3_place")  # the same bucket as the stores' with "s3"
    before = stores.images.where
    stores.db.objects = stores.db.objects or place.bucket()
    big = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # more than two chunks
    pngs = [big, b"small", b""]
    made = {image.id: png for image, png in zip(completed(stores, pngs), pngs)}
    keys_before = place.keys()
    into_bucket = ImageStore(stores.db, stores.images.root, "s3")
    assert into_bucket.move_files_in(batch=2) == (0 if before == "s3" else 3)
    rows = {image_id: into_bucket.get(image_id) for image_id in made}
    assert all(str(image.path).startswith("s3:") for image in rows.values())
    assert {image_id: image.path.read_bytes() for image_id, image in rows.items()} == made
    assert place.keys() == sorted(str(image.path).removeprefix("s3:") for image in rows.values())
    if before == "s3":
        assert place.keys() == keys_before  # nothing copied again
    else:
        assert keys_before == []
    # the old bytes are gone: no file left in the folder, no chunk in the database
    assert [p for p in stores.images.root.rglob("*") if p.is_file()] == []
    with stores.db.transaction(write=False) as tx:
        assert tx.scalar("SELECT count(*) AS n FROM image_blobs") == 0
    assert into_bucket.move_files_in() == 0
