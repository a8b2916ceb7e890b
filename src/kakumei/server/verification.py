"""Check sampled results of untrusted workers on the server's own (trusted) worker.

Between jobs the local worker takes the oldest pending check, re-runs the job from its
recorded request and reported seed (`worker/verify.py`), and hands the verdict to the
worker's record (`store/workers.py`), which pays or withholds its credit and moves its status.
"""

from __future__ import annotations

import logging

from kakumei.errors import KakumeiError
from kakumei.server.inputs import resolve_inputs
from kakumei.store.images import ImageStore
from kakumei.store.jobs import JobStore
from kakumei.store.workers import Verification, WorkerStore
from kakumei.worker.loop import GenerationEngine
from kakumei.worker.verify import recheck

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
        # The seed the worker reported: a request with seed -1 was resolved by the worker.
        request = resolve_inputs(self.jobs.db, job.request).model_copy(update={"model": job.model, "seed": job.seed})
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
