"""/api/v1/worker/...: the protocol remote workers speak (kakumei.worker.remote is its client).

A worker authenticates with its worker key and sees only the jobs leased to it
(server/worker_access.py). Every report names the lease; a report on a lease the worker no
longer holds (it expired and the job went to someone else, or the job finished) is refused
with 409 and changes nothing. Uploaded images are checked in server/job_source.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

import kakumei
from kakumei.protocol import (
    BatchClaim,
    Capabilities,
    CheckReport,
    CheckTask,
    Done,
    FailureReport,
    HeartbeatReply,
    HeartbeatReport,
    ImagesReport,
    Lease,
    LeasedJob,
    LeasedJobs,
    WorkerInfo,
)
from kakumei.server import job_source
from kakumei.server.bodies import documented, json_body
from kakumei.server.deps import Svc
from kakumei.server.errors import Refused
from kakumei.server import verification
from kakumei.server.results import complete_from_worker
from kakumei.server.services import Services
from kakumei.server.worker_access import ActiveWorker, CurrentWorker, leased_to, lost, reporting_on
from kakumei.server.openapi import problems
from kakumei.store.jobs import Job
from kakumei.store.workers import WorkerRecord
from kakumei.worker.loop import GPU_BATCH_JOBS

router = APIRouter(prefix="/api/v1/worker", tags=["worker protocol"])

# A report of finished images may be big: read after the worker's key is checked (it comes
# after ActiveWorker in each route's parameters) and parsed in the parse pool. Its images are
# checked in the route, which ends right after: the body's budget share goes back with it.
ImagesBody = Annotated[ImagesReport, Depends(json_body(ImagesReport, release=False))]


@router.get("/me", response_model=WorkerInfo, responses=problems(401, 403))
def me(svc: Svc, worker: CurrentWorker) -> WorkerInfo:
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


@router.post("/claim", response_model=LeasedJob, responses={204: {"description": "nothing to run now"}, **problems(400, 401, 403, 413)})
def claim(body: Capabilities, svc: Svc, worker: ActiveWorker) -> Any:
    """Lease the fair next job this worker can run; 204 when there is none."""
    lease = svc.jobs.claim(worker.lease_owner, _seen(body, svc, worker))
    if lease is None:
        return Response(status_code=204)
    return _lease_out(svc, lease.job, lease.lease_id)


@router.post("/claim-batch", response_model=LeasedJobs, responses=problems(400, 401, 403, 413))
def claim_batch(body: BatchClaim, svc: Svc, worker: ActiveWorker) -> LeasedJobs:
    """Lease up to `max_jobs` jobs that can share one batch, preferring `prefer_model`, both
    within the server's fairness slack (JobStore.claim_batch); an empty list when none."""
    leases = svc.jobs.claim_batch(
        worker.lease_owner,
        _seen(body, svc, worker),
        # "auto" caps at what a GPU batches: the worker's own device sets its batch size
        max_jobs=min(body.max_jobs, svc.settings.worker_batch_jobs or GPU_BATCH_JOBS),
        prefer_model=body.prefer_model,
        slack=svc.settings.fairness_slack,
    )
    return LeasedJobs(leases=[_lease_out(svc, lease.job, lease.lease_id) for lease in leases])


@router.get("/jobs/{job_id}", response_model=LeasedJob, responses=problems(401, 403, 404))
def leased_job(job_id: str, svc: Svc, worker: ActiveWorker) -> LeasedJob:
    """A job this worker holds (to pick up after a reconnect); 404 for any other job."""
    return _lease_out(svc, leased_to(svc, worker, job_id), "")


@router.post("/jobs/{job_id}/heartbeat", response_model=HeartbeatReply, responses=problems(400, 401, 403, 404, 409, 413))
def heartbeat(job_id: str, body: HeartbeatReport, svc: Svc, worker: ActiveWorker) -> HeartbeatReply:
    """Progress (and a preview) for the job's watchers; keeps the lease. Answers whether to stop."""
    leased_to(svc, worker, job_id)
    reply = svc.jobs.heartbeat(job_id, body.lease_id, body)
    if not reply.ok:
        raise lost(job_id)
    return reply


@router.post("/jobs/{job_id}/complete", response_model=Done, responses=problems(400, 401, 403, 404, 409, 413, 415, 422),
             openapi_extra=documented(ImagesReport))
def complete(job_id: str, svc: Svc, worker: ActiveWorker, body: ImagesBody) -> Done:
    """The job's images. Refused (409) if the lease is gone: each job completes once; refused
    (422) if they fail the cheap checks (then the job goes back to the queue)."""
    complete_reported(svc, worker, job_id, body)
    return Done()


def complete_reported(svc: Services, worker: WorkerRecord, job_id: str, body: ImagesReport) -> None:
    """A remote worker's finished job, for every worker protocol (this one and the AI Horde's):
    the job must be this worker's, then server/results.py's one completion path."""
    job = reporting_on(svc, worker, job_id)
    if not complete_from_worker(svc, worker, job, body.lease_id, body.images, body.seed):
        raise lost(job_id)


@router.post("/jobs/{job_id}/fail", response_model=Done, responses=problems(400, 401, 403, 404, 409, 413))
def fail(job_id: str, body: FailureReport, svc: Svc, worker: ActiveWorker) -> Done:
    """The worker could not run the job. It goes back to the queue for another worker (one
    machine's trouble is not the job's), and fails with the reason after max_attempts."""
    reporting_on(svc, worker, job_id)
    if not svc.jobs.release(job_id, body.lease_id, count_attempt=True, reason=f"worker failed: {body.reason}"):
        raise lost(job_id)
    svc.workers.on_failed(worker.id)
    return Done()


@router.post("/jobs/{job_id}/cancelled", response_model=Done, responses=problems(400, 401, 403, 404, 409, 413, 415, 422),
             openapi_extra=documented(ImagesReport))
def cancelled(job_id: str, svc: Svc, worker: ActiveWorker, body: ImagesBody) -> Done:
    """The worker stopped a job its owner cancelled; images finished before the stop are kept."""
    job = reporting_on(svc, worker, job_id)
    try:
        checked = job_source.checked_images(job, body.images, complete=False)
    except job_source.BadResult as bad:
        raise Refused(422, f"{bad}; send the cancelled job's finished images, or none") from None
    pending = svc.images.write_files(job_id, checked)
    if not svc.jobs.acknowledge_cancel(job_id, body.lease_id, pending):
        raise lost(job_id)
    return Done()


@router.post("/jobs/{job_id}/release", response_model=Done, responses=problems(400, 401, 403, 404, 409, 413))
def release(job_id: str, body: Lease, svc: Svc, worker: CurrentWorker) -> Done:
    """Hand a job back untouched (the worker is shutting down); no attempt is counted."""
    reporting_on(svc, worker, job_id)
    if not svc.jobs.release(job_id, body.lease_id):
        raise lost(job_id)
    return Done()


@router.post("/checks/claim", response_model=CheckTask, responses={204: {"description": "no check waiting"}, **problems(400, 401, 403, 413)})
def claim_check(body: Capabilities, svc: Svc, worker: ActiveWorker) -> Any:
    """A trusted worker re-runs another worker's job to check it (server/verification.py);
    204 when none is waiting, 403 for a worker that is not trusted."""
    task = verification.claim_for_worker(svc.workers, svc.jobs, worker, _seen(body, svc, worker))
    return Response(status_code=204) if task is None else task


@router.post("/checks/{check_id}", response_model=Done, responses=problems(400, 401, 403, 409, 413, 422))
def report_check(check_id: int, body: CheckReport, svc: Svc, worker: ActiveWorker) -> Done:
    """The re-run's images; the server compares them with the checked result."""
    verification.report_from_worker(svc.workers, svc.images, worker, check_id, body.images,
                                    max_distance=svc.settings.verify_max_distance)
    return Done()
