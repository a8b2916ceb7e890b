"""Re-run a sampled job of an untrusted worker on a trusted one, and judge its images.

The trusted worker is the server's own (local) worker: between jobs it takes the oldest
pending check, regenerates the job from its recorded request and seed, and compares each
image by perceptual distance (`perceptual.py`). The outcome goes to the worker's record
(`store/workers.py`), which pays or withholds its credit and moves its status.
"""

from __future__ import annotations

import logging
from typing import Any

from kakumei.errors import KakumeiError
from kakumei.server.inputs import resolve_inputs
from kakumei.store.images import ImageStore
from kakumei.store.jobs import JobStore
from kakumei.store.workers import Verification, WorkerStore
from kakumei.worker.perceptual import png_distance

log = logging.getLogger(__name__)


class Verifier:
    def __init__(
        self,
        workers: WorkerStore,
        jobs: JobStore,
        images: ImageStore,
        engine: Any,
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
        # The seed the worker reported: a request with seed -1 was resolved by the worker.
        request = resolve_inputs(self.jobs.db, job.request).model_copy(update={"model": job.model, "seed": job.seed})
        try:
            result = self.engine.generate(request)
        except KakumeiError as exc:
            # Not the worker's fault (say this server lacks the model): it keeps its credit.
            log.warning("cannot re-run job %s to check worker %d: %s", job.id, check.worker_id, exc)
            self.workers.finish_verification(check, distance=None, passed=True)
            return
        fresh = {image.index: image for image in result.images}
        distances = [
            png_distance(image.path.read_bytes(), fresh[image.index].png) if image.index in fresh else 1.0
            for image in stored
        ]
        # Missing images count as a mismatch as much as wrong ones do.
        distance = max(distances) if distances and len(stored) == len(fresh) else 1.0
        passed = distance <= self.max_distance
        corrected = None
        if not passed:
            corrected = {i: (g.png, g.infotext, g.metadata) for i, g in fresh.items()}
        status = self.workers.finish_verification(check, distance=distance, passed=passed, corrected=corrected)
        log.info(
            "job %s of worker %d re-run: distance %.4f, %s; worker is %s",
            job.id, check.worker_id, distance, "match" if passed else "MISMATCH", status.value,
        )
