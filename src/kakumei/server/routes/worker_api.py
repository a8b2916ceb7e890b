"""/api/v1/worker/...: the protocol remote workers speak (kakumei.worker.remote is its client).

A worker authenticates with its worker key and sees only the jobs leased to it. Every report
names the lease; a report on a lease the worker no longer holds (it expired and the job went
to someone else, or the job finished) is refused with 409 and changes nothing, which is what
keeps "each job completes once" with workers that stall, die or come back late.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from PIL import Image
from pydantic import BaseModel, Field

import kakumei
from kakumei.schemas import GenerationRequest
from kakumei.server.deps import services
from kakumei.server.inputs import resolve_inputs
from kakumei.server.services import Services
from kakumei.store.images import ImageResult
from kakumei.store.jobs import Capabilities, Job, JobState
from kakumei.store.workers import WorkerRecord, WorkerStatus

router = APIRouter(prefix="/api/v1/worker", tags=["worker protocol"])

MAX_REASON = 2000


class WorkerInfo(BaseModel):
    name: str
    owner: str
    status: str
    lease_seconds: float
    server_version: str


class ClaimIn(BaseModel):
    models: list[str] | None = Field(None, description="models this worker can run; null: any")
    max_pixels: int | None = Field(None, ge=64 * 64, description="largest width x height it takes")
    max_batch: int | None = Field(None, ge=1, description="most images in one job it takes")


class ClaimBatchIn(ClaimIn):
    max_jobs: int = Field(1, ge=1, le=16, description="most jobs to lease at once; the server may give fewer")
    prefer_model: str | None = Field(None, description="the model this worker has loaded (model affinity)")


class LeaseOut(BaseModel):
    job_id: str
    lease_id: str
    lease_seconds: float
    model: str
    request: GenerationRequest
    cost: float
    attempts: int


class HeartbeatIn(BaseModel):
    lease_id: str
    step: int | None = None
    total: int | None = None
    image_offset: int = 0
    preview: str | None = Field(None, max_length=200_000, description="small PNG as a data URL")


class HeartbeatOut(BaseModel):
    cancel_requested: bool


class ImageIn(BaseModel):
    png_base64: str
    seed: int
    index: int = Field(ge=0)
    infotext: str = ""
    metadata: dict[str, Any] = {}


class CompleteIn(BaseModel):
    lease_id: str
    seed: int | None = None
    images: list[ImageIn]


class FailIn(BaseModel):
    lease_id: str
    reason: str = Field(max_length=MAX_REASON)


class LeaseIn(BaseModel):
    lease_id: str


class Done(BaseModel):
    ok: bool = True


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


def _decode(job: Job, images: list[ImageIn], *, complete: bool = True) -> list[ImageResult]:
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
            png = base64.b64decode(image.png_base64, validate=True)
            with Image.open(io.BytesIO(png)) as decoded:
                fmt, got = decoded.format, decoded.size
        except (binascii.Error, ValueError, OSError):
            raise HTTPException(422, f"image {image.index} is not a readable base64 PNG") from None
        if fmt != "PNG" or got != size:
            raise HTTPException(422, f"image {image.index} is a {fmt} of {got[0]}x{got[1]}; the job asks for a PNG of {size[0]}x{size[1]}")
        out.append(ImageResult(png=png, seed=image.seed, index=image.index, infotext=image.infotext, metadata=image.metadata))
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


def _seen_caps(body: ClaimIn, svc: Services, worker: WorkerRecord) -> Capabilities:
    """Record the worker's visit and the capabilities it announced; both claims start here."""
    svc.workers.seen(worker.id, body.model_dump())
    return Capabilities(
        models=None if body.models is None else tuple(body.models),
        max_pixels=body.max_pixels,
        max_images=body.max_batch,
    )


def _lease_out(svc: Services, job: Job, lease_id: str) -> LeaseOut:
    return LeaseOut(
        job_id=job.id, lease_id=lease_id, lease_seconds=svc.settings.lease_seconds, model=job.model,
        request=resolve_inputs(svc.db, job.request), cost=job.cost, attempts=job.attempts,
    )


@router.post("/claim", response_model=LeaseOut, responses={204: {"description": "nothing to run now"}})
def claim(body: ClaimIn, svc: Svc, worker: Active) -> Any:
    """Lease the fair next job this worker can run; 204 when there is none."""
    lease = svc.jobs.claim(worker.lease_owner, _seen_caps(body, svc, worker))
    if lease is None:
        return Response(status_code=204)
    return _lease_out(svc, lease.job, lease.lease_id)


class LeasesOut(BaseModel):
    leases: list[LeaseOut]


@router.post("/claim-batch", response_model=LeasesOut)
def claim_batch(body: ClaimBatchIn, svc: Svc, worker: Active) -> LeasesOut:
    """Lease up to `max_jobs` jobs that can share one batch, preferring `prefer_model`, both
    within the server's fairness slack (JobStore.claim_batch); an empty list when none."""
    leases = svc.jobs.claim_batch(
        worker.lease_owner,
        _seen_caps(body, svc, worker),
        max_jobs=min(body.max_jobs, svc.settings.worker_batch_jobs),
        prefer_model=body.prefer_model,
        slack=svc.settings.fairness_slack,
    )
    return LeasesOut(leases=[_lease_out(svc, lease.job, lease.lease_id) for lease in leases])


@router.get("/jobs/{job_id}", response_model=LeaseOut)
def leased_job(job_id: str, svc: Svc, worker: Active) -> LeaseOut:
    """A job this worker holds (to pick up after a reconnect); 404 for any other job."""
    return _lease_out(svc, _leased_to(svc, worker, job_id), "")


@router.post("/jobs/{job_id}/heartbeat", response_model=HeartbeatOut)
def heartbeat(job_id: str, body: HeartbeatIn, svc: Svc, worker: Active) -> HeartbeatOut:
    """Progress (and a preview) for the job's watchers; keeps the lease. Answers whether to stop."""
    _leased_to(svc, worker, job_id)
    reply = svc.jobs.heartbeat(
        job_id, body.lease_id, step=body.step, total=body.total, image_offset=body.image_offset, preview=body.preview
    )
    if not reply.ok:
        raise _lost(job_id)
    return HeartbeatOut(cancel_requested=reply.cancel_requested)


@router.post("/jobs/{job_id}/complete", response_model=Done)
def complete(job_id: str, body: CompleteIn, svc: Svc, worker: Active) -> Done:
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
def fail(job_id: str, body: FailIn, svc: Svc, worker: Active) -> Done:
    """The worker could not run the job. It goes back to the queue for another worker (one
    machine's trouble is not the job's), and fails with the reason after max_attempts."""
    _refusing_lost(svc, worker, job_id)
    if not svc.jobs.release(job_id, body.lease_id, count_attempt=True, reason=f"worker failed: {body.reason}"):
        raise _lost(job_id)
    svc.workers.on_failed(worker.id)
    return Done()


@router.post("/jobs/{job_id}/cancelled", response_model=Done)
def cancelled(job_id: str, body: CompleteIn, svc: Svc, worker: Active) -> Done:
    """The worker stopped a job its owner cancelled; images finished before the stop are kept."""
    job = _refusing_lost(svc, worker, job_id)
    pending = svc.images.write_files(job_id, _decode(job, body.images, complete=False))
    if not svc.jobs.acknowledge_cancel(job_id, body.lease_id, pending):
        raise _lost(job_id)
    return Done()


@router.post("/jobs/{job_id}/release", response_model=Done)
def release(job_id: str, body: LeaseIn, svc: Svc, worker: Annotated[WorkerRecord, Depends(current_worker)]) -> Done:
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
