"""Accepting a remote worker's result: the one completion path every worker API shares (the
native worker protocol, and any other protocol that lets outside machines run jobs).

Every result meets the cheap checks first (`job_source.checked_images`: count, size, a
decodable PNG, not one flat colour). A result that fails them is refused: the job goes back
to the queue for another worker, untouched (no attempt counted: the fault is the worker's),
and the worker's record takes a failed check (`WorkerStore.refuse_result`: pending credit
void, quarantine by policy). A result that passes completes the job, and the worker's pay
goes through `WorkerStore.on_completed` (paid, or held in escrow until checks pass) in the
completing transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kakumei.protocol import ImageReport
from kakumei.server.errors import Refused
from kakumei.server.job_source import BadResult, check_seed, checked_images
from kakumei.server.services import Services
from kakumei.store.jobs import Job
from kakumei.store.workers import WorkerRecord

log = logging.getLogger(__name__)


def complete_from_worker(
    svc: Services, worker: WorkerRecord, job: Job, lease_id: str, images: Sequence[ImageReport], seed: int | None
) -> bool:
    """Complete `job` with `worker`'s images; False when its lease is gone (nothing changed).

    Raises Refused (422) for a report that is not a result (unreadable, wrong indexes or
    seed: nothing changes, the worker may send again) and for a refused result (the job is
    back in the queue and the worker's record took a failed check)."""
    check_seed(job, seed)
    try:
        results = checked_images(job, images)
    except BadResult as bad:
        if not svc.jobs.release(job.id, lease_id, reason=f"a worker's result was refused: {bad}"):
            return False
        status = svc.workers.refuse_result(worker.id, job.id)
        log.warning("refused job %s from worker %s: %s; the worker is %s", job.id, worker.name, bad, status.value)
        raise Refused(422, f"{bad}; the result is refused and the job goes back to the queue "
                           f"(this worker is now {status.value})") from None
    pending = svc.images.write_files(job.id, results)
    return svc.jobs.complete(
        job.id, lease_id, pending, seed=seed, after=lambda tx: svc.workers.on_completed(tx, worker, job.id)
    )
