"""/api/v1/jobs: submit, read, list and cancel jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response

from kakumei.schemas import IMAGE_FIELDS, GenerationRequest
from kakumei.server.bodies import documented, json_body
from kakumei.server.deps import Svc, Who, owned_job
from kakumei.server.models import JobList, JobOut
from kakumei.server.submission import SubmitRefused, submit_generation
from kakumei.server.views import job_out, jobs_of
from kakumei.server.openapi import problems

router = APIRouter(prefix="/api/v1", tags=["jobs"])

MAX_IDEMPOTENCY_KEY = 200


@router.post("/jobs", status_code=201, response_model=JobOut, responses=problems(400, 401, 403, 409, 413, 415, 422, 429),
             openapi_extra=documented(GenerationRequest))
def submit_job(
    response: Response,
    svc: Svc,
    who: Who,
    # After the caller: a request is authenticated before its images are decoded.
    request: Annotated[GenerationRequest, Depends(json_body(GenerationRequest, decoding=IMAGE_FIELDS))],
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


@router.get("/jobs", response_model=JobList, responses=problems(401, 403))
def my_jobs(svc: Svc, who: Who, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> JobList:
    """Your jobs, newest first."""
    return jobs_of(svc, who, limit)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=problems(401, 403, 404))
def get_job(job_id: str, svc: Svc, who: Who) -> JobOut:
    return job_out(svc, owned_job(svc, who, job_id))


@router.delete("/jobs/{job_id}", response_model=JobOut, responses=problems(401, 403, 404))
def cancel_job(job_id: str, svc: Svc, who: Who) -> JobOut:
    """Cancel in any state: a queued job at once, a running one at its next step."""
    owned_job(svc, who, job_id)
    job = svc.jobs.cancel(job_id)
    assert job is not None
    return job_out(svc, job)
