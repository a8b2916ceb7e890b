"""/api/v1/worker/...: the protocol remote workers speak (kakumei.worker.remote is its client).

A worker authenticates with its worker key and sees only the jobs leased to it. Every report
names the lease; a report on a lease the worker no longer holds (it expired and the job went
to someone else, or the job finished) is refused with 409 and changes nothing, which is what
keeps "each job completes once" with workers that stall, die or come back late.
"""

from __future__ import annotations

import binascii
import io
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from PIL import Image

import kakumei
from kakumei.protocol import (
    BatchClaim,
    Capabilities,
    Done,
    FailureReport,
    HeartbeatReply,
    HeartbeatReport,
    ImageReport,
    ImagesReport,
    Lease,
    LeasedJob,
    LeasedJobs,
    WorkerInfo,
)
from kakumei.server import job_source
from kakumei.server.deps import services
from kakumei.server.services import Services
from kakumei.store.images import ImageResult
from kakumei.store.jobs import Job, JobState
from kakumei.store.workers import WorkerRecord, WorkerStatus

router = APIRouter(prefix="/api/v1/worker", tags=["worker protocol"])


def current_worker(request: Request) -> WorkerRecord:
    """The worker behind the Bearer key; a user's key is told it cannot act as a worker."""
    svc = services(request)
    scheme, _, key = (request.headers.get("authorization") or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise HTTPException(401, "workers send 'Authorization: Bearer WORKER_KEY'", {"WWW-Authenticate": "Bearer"})
    worker = svc.workers.by_key(key)
    if worker is not None:
        return worker
    if svc.users.by_key(key) is not None:
        raise HTTPException(
            403,
            "this is a user's API key, which cannot act as a worker; create a worker key with "
            "'kakumei workers add OWNER NAME' or POST /api/v1/me/workers",
        )
    raise HTTPException(401, "unknown worker key", {"WWW-Authenticate": "Bearer"})


def active_worker(worker: Annotated[WorkerRecord, Depends(current_worker)]) -> WorkerRecord:
    if worker.status == WorkerStatus.QUARANTINED:
        raise HTTPException(
            403,
            f"worker {worker.name!r} is quarantined: {worker.mismatches} of its results did not match a "
            "re-run on a trusted worker; ask the server's operator to review it",
        )
    return worker


Svc = Annotated[Services, Depends(services)]
Active = Annotated[WorkerRecord, Depends(active_worker)]


def _leased_to(svc: Services, worker: WorkerRecord, job_id: str) -> Job:
    """The job if this worker holds its lease; 404 otherwise (others' jobs are not disclosed)."""
    job = svc.jobs.get(job_id)
    if job is None or job.worker_id != worker.lease_owner or job.state not in (JobState.LEASED, JobState.RUNNING):
        raise HTTPException(404, f"no job {job_id!r} is leased to this worker")
    return job


def _lost(job_id: str) -> HTTPException:
    return HTTPException(
        409,
        f"job {job_id!r} is no longer leased to this worker (its lease ran out and the job went back "
        "to the queue, or it finished); the report was not kept",
    )


def _decode(job: Job, images: list[ImageReport], *, complete: bool = True) -> list[ImageResult]:
    """Worker-sent images, checked to be PNGs of the requested size, each index once (and
    all of them for a completed job)."""
    expected = job.request.image_count
    indexes = sorted(i.index for i in images)
    if len(set(indexes)) != len(indexes) or any(i >= expected for i in indexes) or (
        complete and len(indexes) != expected
    ):
        raise HTTPException(422, f"job {job.id!r} has images 0..{expected - 1}, got indexes {indexes}")
    size = job.request.hr_size if job.request.enable_hr else (job.request.width, job.request.height)
    out = []
    for image in images:
        try:
            png = image.png()
            with Image.open(io.BytesIO(png)) as decoded:
                fmt, got = decoded.format, decoded.size
        except (binascii.Error, ValueError, OSError):
            raise HTTPException(422, f"image {image.index} is not a readable base64 PNG") from None
        if fmt != "PNG" or got != size:
            raise HTTPException(422, f"image {image.index} is a {fmt} of {got[0]}x{got[1]}; the job asks for a PNG of {size[0]}x{size[1]}")
        out.append(job_source.image_result(image, png))
    return out


@router.get("/me", response_model=WorkerInfo)
def me(svc: Svc, worker: Annotated[WorkerRecord, Depends(current_worker)]) -> WorkerInfo:
    """Who this key is, and the lease time the worker must heartbeat within."""
    return WorkerInfo(
        name=worker.name,
        owner=worker.owner,
        status=worker.status.value,
        lease_seconds=svc.settings.lease_seconds,
        server_version=kakumei.__version__,
    )


def _seen(body: Capabilities, svc: Services, worker: WorkerRecord) -> Capabilities:
    """Record the worker's visit and the capabilities it announced; both claims start here."""
    svc.workers.seen(worker.id, body.model_dump(mode="json"))
    return body


def _lease_out(svc: Services, job: Job, lease_id: str) -> LeasedJob:
    return job_source.leased_job(svc.db, job, lease_id, svc.settings.lease_seconds)


@router.post("/claim", response_model=LeasedJob, responses={204: {"description": "nothing to run now"}})
def claim(body: Capabilities, svc: Svc, worker: Active) -> Any:
    """Lease the fair next job this worker can run; 204 when there is none."""
    lease = svc.jobs.claim(worker.lease_owner, _seen(body, svc, worker))
    if lease is None:
        return Response(status_code=204)
    return _lease_out(svc, lease.job, lease.lease_id)


@router.post("/claim-batch", response_model=LeasedJobs)
def claim_batch(body: BatchClaim, svc: Svc, worker: Active) -> LeasedJobs:
    """Lease up to `max_jobs` jobs that can share one batch, preferring `prefer_model`, both
    within the server's fairness slack (JobStore.claim_batch); an empty list when none."""
    leases = svc.jobs.claim_batch(
        worker.lease_owner,
        _seen(body, svc, worker),
        max_jobs=min(body.max_jobs, svc.settings.worker_batch_jobs),
        prefer_model=body.prefer_model,
        slack=svc.settings.fairness_slack,
    )
    return LeasedJobs(leases=[_lease_out(svc, lease.job, lease.lease_id) for lease in leases])


@router.get("/jobs/{job_id}", response_model=LeasedJob)
def leased_job(job_id: str, svc: Svc, worker: Active) -> LeasedJob:
    """A job this worker holds (to pick up after a reconnect); 404 for any other job."""
    return _lease_out(svc, _leased_to(svc, worker, job_id), "")


@router.post("/jobs/{job_id}/heartbeat", response_model=HeartbeatReply)
def heartbeat(job_id: str, body: HeartbeatReport, svc: Svc, worker: Active) -> HeartbeatReply:
    """Progress (and a preview) for the job's watchers; keeps the lease. Answers whether to stop."""
    _leased_to(svc, worker, job_id)
    reply = svc.jobs.heartbeat(job_id, body.lease_id, body)
    if not reply.ok:
        raise _lost(job_id)
    return reply


@router.post("/jobs/{job_id}/complete", response_model=Done)
def complete(job_id: str, body: ImagesReport, svc: Svc, worker: Active) -> Done:
    """The job's images. Refused (409) if the lease is gone: each job completes once."""
    job = _refusing_lost(svc, worker, job_id)
    if job.request.seed != -1 and body.seed != job.request.seed:
        # Checks re-run the reported seed, so it must be the one the request fixed.
        raise HTTPException(422, f"job {job_id!r} asks for seed {job.request.seed}, the result says {body.seed}")
    pending = svc.images.write_files(job_id, _decode(job, body.images))
    done = svc.jobs.complete(
        job_id, body.lease_id, pending, seed=body.seed, after=lambda tx: svc.workers.on_completed(tx, worker, job_id)
    )
    if not done:
        raise _lost(job_id)
    return Done()


@router.post("/jobs/{job_id}/fail", response_model=Done)
def fail(job_id: str, body: FailureReport, svc: Svc, worker: Active) -> Done:
    """The worker could not run the job. It goes back to the queue for another worker (one
    machine's trouble is not the job's), and fails with the reason after max_attempts."""
    _refusing_lost(svc, worker, job_id)
    if not svc.jobs.release(job_id, body.lease_id, count_attempt=True, reason=f"worker failed: {body.reason}"):
        raise _lost(job_id)
    svc.workers.on_failed(worker.id)
    return Done()


@router.post("/jobs/{job_id}/cancelled", response_model=Done)
def cancelled(job_id: str, body: ImagesReport, svc: Svc, worker: Active) -> Done:
    """The worker stopped a job its owner cancelled; images finished before the stop are kept."""
    job = _refusing_lost(svc, worker, job_id)
    pending = svc.images.write_files(job_id, _decode(job, body.images, complete=False))
    if not svc.jobs.acknowledge_cancel(job_id, body.lease_id, pending):
        raise _lost(job_id)
    return Done()


@router.post("/jobs/{job_id}/release", response_model=Done)
def release(job_id: str, body: Lease, svc: Svc, worker: Annotated[WorkerRecord, Depends(current_worker)]) -> Done:
    """Hand a job back untouched (the worker is shutting down); no attempt is counted."""
    _refusing_lost(svc, worker, job_id)
    if not svc.jobs.release(job_id, body.lease_id):
        raise _lost(job_id)
    return Done()


def _refusing_lost(svc: Services, worker: WorkerRecord, job_id: str) -> Job:
    try:
        return _leased_to(svc, worker, job_id)
    except HTTPException:
        # A job this worker held before: say the lease is gone rather than "no such job".
        raise _lost(job_id) from None
