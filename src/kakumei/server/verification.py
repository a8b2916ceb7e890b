"""Check results of untrusted workers on a trusted machine: the server's own worker, or any
trusted remote worker (a server may have no GPU of its own).

Between jobs the local worker takes the oldest pending check, re-runs the job from its
recorded request and reported seed (`worker/verify.py`), and hands the verdict to the
worker's record (`store/workers.py`), which pays or withholds its credit and moves its status.
A trusted remote worker does the same over the worker protocol (`claim_check`, then
`report_check` with its images); the server compares them with the stored ones itself.
"""

from __future__ import annotations

import logging

from collections.abc import Sequence

from kakumei.errors import KakumeiError
from kakumei.protocol import Capabilities, CheckTask, ImageReport
from kakumei.schemas import GenerationRequest
from kakumei.server.errors import Refused
from kakumei.server.inputs import resolve_inputs
from kakumei.store.images import ImageStore
from kakumei.store.jobs import JobStore
from kakumei.store.workers import Verification, WorkerRecord, WorkerStatus, WorkerStore
from kakumei.worker.loop import GenerationEngine
from kakumei.worker.verify import compare, recheck

log = logging.getLogger(__name__)


class Verifier:
    def __init__(
        self,
        workers: WorkerStore,
        jobs: JobStore,
        images: ImageStore,
        engine: GenerationEngine,
        verifier_id: str,
        *,
        max_distance: float,
    ) -> None:
        self.workers = workers
        self.jobs = jobs
        self.images = images
        self.engine = engine
        self.verifier_id = verifier_id
        self.max_distance = max_distance

    def run_one(self) -> bool:
        """Check one pending result. False when none was waiting."""
        check = self.workers.claim_verification(self.verifier_id)
        if check is None:
            return False
        try:
            self._check(check)
        except Exception:  # a check that cannot be made must not stay "running" forever
            log.exception("checking job %s failed; counted as unverifiable", check.job_id)
            self.workers.finish_verification(check, distance=None, passed=True)
        return True

    def _check(self, check: Verification) -> None:
        job = self.jobs.get(check.job_id)
        stored = self.images.for_job(check.job_id)
        if job is None or job.seed is None:
            self.workers.finish_verification(check, distance=None, passed=True)
            return
        # Files another machine wrote are not here: the check fails and counts as unverifiable.
        reported = {image.index: image.path.read_bytes() for image in stored}
        request = rerun_request(self.jobs, job.id)
        assert request is not None
        try:
            verdict = recheck(self.engine, request, reported, max_distance=self.max_distance)
        except KakumeiError as exc:
            # Not the worker's fault (say this server lacks the model): it keeps its credit.
            log.warning("cannot re-run job %s to check worker %d: %s", job.id, check.worker_id, exc)
            self.workers.finish_verification(check, distance=None, passed=True)
            return
        status = self.workers.finish_verification(
            check, distance=verdict.distance, passed=verdict.passed, corrected=verdict.corrected
        )
        log.info(
            "job %s of worker %d re-run: distance %.4f, %s; worker is %s",
            job.id, check.worker_id, verdict.distance, "match" if verdict.passed else "MISMATCH", status.value,
        )


def rerun_request(jobs: JobStore, job_id: str) -> GenerationRequest | None:
    """The checked job's request as a re-run makes it: its model, its inputs, and the seed
    its worker reported (a request with seed -1 was resolved by the worker). None when the
    job cannot be re-run (gone, or no seed recorded)."""
    job = jobs.get(job_id)
    if job is None or job.seed is None:
        return None
    return resolve_inputs(jobs.db, job.request).model_copy(update={"model": job.model, "seed": job.seed})


def claim_for_worker(
    svc_workers: WorkerStore, jobs: JobStore, worker: WorkerRecord, caps: Capabilities
) -> CheckTask | None:
    """A pending check for a trusted remote worker (never of its own jobs, only of a model it
    runs), or None."""
    if worker.status != WorkerStatus.TRUSTED:
        raise Refused(403, f"worker {worker.name!r} is {worker.status.value}; only trusted workers check others' results")
    # A worker runs one check at a time: one it claimed and never reported (it could not run
    # it, or it restarted) goes back for someone else.
    svc_workers.recover_verifier(worker.lease_owner)
    check = svc_workers.claim_verification(worker.lease_owner, not_of=worker.id)
    if check is None:
        return None
    request = rerun_request(jobs, check.job_id)
    if request is None:
        svc_workers.finish_verification(check, distance=None, passed=True)  # nothing to re-run
        return None
    assert request.model is not None
    if caps.models is not None and request.model not in caps.models:
        svc_workers.recover_verifier(worker.lease_owner)  # not this worker's model: leave it for another
        return None
    return CheckTask(check_id=check.id, model=request.model, request=request.model_copy(update={"model": None}))


def report_from_worker(
    svc_workers: WorkerStore, images: ImageStore, worker: WorkerRecord, check_id: int, reported: Sequence[ImageReport],
    *, max_distance: float,
) -> WorkerStatus:
    """A trusted remote worker's re-run: compare it with the stored result and record the
    verdict (on a mismatch its images replace the job's). Returns the checked worker's status."""
    check = svc_workers.running_check(check_id, worker.lease_owner)
    if check is None:
        raise Refused(409, f"check {check_id} is not one this worker is running")
    stored = {image.index: image.path.read_bytes() for image in images.for_job(check.job_id)}
    try:
        fresh = {r.index: (r.png(), r.infotext, r.metadata) for r in reported}
    except ValueError:
        raise Refused(422, "the re-run's images are not readable base64") from None
    verdict = compare(stored, fresh, max_distance=max_distance)
    status = svc_workers.finish_verification(check, distance=verdict.distance, passed=verdict.passed,
                                             corrected=verdict.corrected)
    log.info("job %s of worker %d re-run by %s: distance %.4f, %s", check.job_id, check.worker_id, worker.name,
             verdict.distance, "match" if verdict.passed else "MISMATCH")
    return status
