"""Who a remote worker is and which jobs it may report on.

A worker authenticates with its worker key and sees only the jobs leased to it; a user's
key is told it cannot act as a worker, and a quarantined worker is refused. A report on a
lease the worker no longer holds is refused with 409, which keeps "each job completes once"
with workers that stall, die or come back late.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from kakumei.server.deps import services
from kakumei.server.errors import Refused
from kakumei.server.services import Services
from kakumei.store.jobs import Job, JobState
from kakumei.store.workers import WorkerRecord, WorkerStatus


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


async def active_worker(worker: Annotated[WorkerRecord, Depends(current_worker)]) -> WorkerRecord:
    if worker.status == WorkerStatus.QUARANTINED:
        raise HTTPException(
            403,
            f"worker {worker.name!r} is quarantined: {worker.mismatches} of its results failed the server's "
            "checks (refused as blank or wrong, or unlike a re-run on a trusted worker); ask the server's "
            "operator to review it",
        )
    return worker


def leased_to(svc: Services, worker: WorkerRecord, job_id: str) -> Job:
    """The job if this worker holds its lease; 404 otherwise (others' jobs are not disclosed)."""
    job = svc.jobs.get(job_id)
    if job is None or job.worker_id != worker.lease_owner or job.state not in (JobState.LEASED, JobState.RUNNING):
        raise Refused(404, f"no job {job_id!r} is leased to this worker")
    return job


def lost(job_id: str) -> Refused:
    return Refused(
        409,
        f"job {job_id!r} is no longer leased to this worker (its lease ran out and the job went back "
        "to the queue, or it finished); the report was not kept",
    )


def reporting_on(svc: Services, worker: WorkerRecord, job_id: str) -> Job:
    """The job a report is about; a job this worker no longer holds is a lost lease (409)
    rather than "no such job"."""
    try:
        return leased_to(svc, worker, job_id)
    except Refused:
        raise lost(job_id) from None


# The dependencies as route parameter types.
CurrentWorker = Annotated[WorkerRecord, Depends(current_worker)]
ActiveWorker = Annotated[WorkerRecord, Depends(active_worker)]
