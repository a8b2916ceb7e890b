"""/api/v1/jobs: submit, read, list and cancel jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response

from kakumei.schemas import GenerationRequest
from kakumei.server.deps import Caller, caller, owned_job, services
from kakumei.server.models import ImageRef, JobList, JobOut, Progress
from kakumei.server.services import Services
from kakumei.server.submission import SubmitRefused, submit_generation
from kakumei.store.jobs import Job, JobState

router = APIRouter(prefix="/api/v1", tags=["jobs"])

MAX_IDEMPOTENCY_KEY = 200


def job_out(svc: Services, job: Job) -> JobOut:
    position = eta = None
    if not job.finished:
        placed = svc.jobs.place(job.id)
        if placed is not None:
            place, eta = placed
            position = place.jobs_ahead if job.state == JobState.QUEUED else None
    images = []
    if job.state in (JobState.SUCCEEDED, JobState.CANCELLED):
        images = [
            ImageRef(id=i.id, url=f"/api/v1/images/{i.id}", seed=i.seed, index=i.index)
            for i in svc.images.for_job(job.id)
        ]
    progress = None
    if job.progress_total is not None:
        progress = Progress(step=job.progress_step, total=job.progress_total)
    return JobOut(
        id=job.id,
        state=job.state.value,
        model=job.model,
        request=job.request.referenced(),  # no image data in answers and listings
        cost=job.cost,
        queue_position=position,
        eta_seconds=eta,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        progress=progress,
        seed=job.seed,
        error=job.error,
        images=images,
        events_url=f"/api/v1/jobs/{job.id}/events",
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


@router.post("/jobs", status_code=201, response_model=JobOut)
def submit_job(
    request: GenerationRequest,
    response: Response,
    svc: Annotated[Services, Depends(services)],
    who: Annotated[Caller, Depends(caller)],
    idempotency_key: Annotated[str | None, Header(max_length=MAX_IDEMPOTENCY_KEY)] = None,
) -> JobOut:
    """Queue a generation. With the same Idempotency-Key, a retry returns the same job."""
    try:
        job, created = submit_generation(svc, who, request, idempotency_key)
    except SubmitRefused as exc:
        raise HTTPException(exc.status, str(exc), exc.headers) from None
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return job_out(svc, job)


@router.get("/jobs", response_model=JobList)
def my_jobs(
    svc: Annotated[Services, Depends(services)],
    who: Annotated[Caller, Depends(caller)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    """Your jobs, newest first."""
    addr = who.scope_addr
    return JobList(jobs=[job_out(svc, j) for j in svc.jobs.for_user(who.user.id, client_addr=addr, limit=limit)])


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(
    job_id: str, svc: Annotated[Services, Depends(services)], who: Annotated[Caller, Depends(caller)]
) -> JobOut:
    return job_out(svc, owned_job(svc, who, job_id))


@router.delete("/jobs/{job_id}", response_model=JobOut)
def cancel_job(
    job_id: str, svc: Annotated[Services, Depends(services)], who: Annotated[Caller, Depends(caller)]
) -> JobOut:
    """Cancel in any state: a queued job at once, a running one at its next step."""
    owned_job(svc, who, job_id)
    job = svc.jobs.cancel(job_id)
    assert job is not None
    return job_out(svc, job)
