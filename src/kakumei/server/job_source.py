"""The worker protocol on the store directly, for the worker inside the server process.

Also the conversions between the store's rows and the protocol's types, which the worker
routes (`routes/worker_api.py`) share: a worker never sees a store row; and the checks a
remote worker's report must pass before its images reach the store.
"""

from __future__ import annotations

import binascii
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from kakumei.protocol import Capabilities, HeartbeatReply, ImageReport, LeasedJob, Progress
from kakumei.server.errors import Refused
from kakumei.server.inputs import resolve_inputs
from kakumei.store.db import Database
from kakumei.store.images import ImageResult, ImageStore, PendingImage
from kakumei.store.jobs import Job, JobStore


def leased_job(db: Database, job: Job, lease_id: str, lease_seconds: float) -> LeasedJob:
    """The part of a leased job's row that its worker needs, its input images as base64."""
    return LeasedJob(
        job_id=job.id, lease_id=lease_id, lease_seconds=lease_seconds, model=job.model,
        request=resolve_inputs(db, job.request),
        cost=job.cost, attempts=job.attempts,
    )


def image_result(report: ImageReport, png: bytes | None = None) -> ImageResult:
    """A reported image for the image store; `png` when the caller has decoded it already."""
    return ImageResult(
        png=report.png() if png is None else png, seed=report.seed, index=report.index, infotext=report.infotext,
        metadata=report.metadata,
    )


def check_seed(job: Job, seed: int | None) -> None:
    """Checks re-run the reported seed, so it must be the one the request fixed."""
    if job.request.seed != -1 and seed != job.request.seed:
        raise Refused(422, f"job {job.id!r} asks for seed {job.request.seed}, the result says {seed}")


class BadResult(Exception):
    """A readable result that is not the picture asked for (wrong size, one flat colour): the
    worker's work is refused, which counts against it as a failed check."""


# A picture whose every channel spans at most this many levels of 255 is one flat colour:
# what a fake worker's blank image, or a NaN turned black, looks like. Real generations,
# the random-weight test model's included, span far more (benchmarks/verification.py).
FLAT_LEVELS = 2


def flat(decoded: Image.Image) -> bool:
    pixels = np.asarray(decoded.convert("RGB"), dtype=np.int16)
    return bool(int(pixels.max()) - int(pixels.min()) <= FLAT_LEVELS)


def checked_images(job: Job, images: Sequence[ImageReport], *, complete: bool = True) -> list[ImageResult]:
    """Worker-sent images, checked to be PNGs of the requested size, each index once (and
    all of them for a completed job), none of them one flat colour. A wrong size or a flat
    image raises BadResult; other faults of the report Refused (the worker may send again)."""
    expected = job.request.image_count
    indexes = sorted(i.index for i in images)
    if len(set(indexes)) != len(indexes) or any(i >= expected for i in indexes) or (
        complete and len(indexes) != expected
    ):
        raise Refused(422, f"job {job.id!r} has images 0..{expected - 1}, got indexes {indexes}")
    size = job.request.hr_size if job.request.enable_hr else (job.request.width, job.request.height)
    out = []
    for image in images:
        try:
            png = image.png()
            with Image.open(io.BytesIO(png)) as decoded:
                fmt, got = decoded.format, decoded.size
                if fmt == "PNG" and got == size:
                    is_flat = flat(decoded)  # decodes the pixels: a truncated file fails here
        except (binascii.Error, ValueError, OSError):
            raise Refused(422, f"image {image.index} is not a readable base64 PNG") from None
        if fmt != "PNG":
            raise Refused(422, f"image {image.index} is a {fmt}; the job asks for a PNG")
        if got != size:
            raise BadResult(f"image {image.index} is {got[0]}x{got[1]}; the job asks for {size[0]}x{size[1]}")
        if is_flat:
            raise BadResult(f"image {image.index} is one flat colour, not a generated picture")
        out.append(image_result(image, png))
    return out


class StoreJobSource:
    """`JobSource` (and `BatchJobSource`) on `JobStore` and `ImageStore`."""

    def __init__(self, jobs: JobStore, images: ImageStore) -> None:
        self.jobs = jobs
        self.images = images

    def claim(self, worker_id: str, caps: Capabilities) -> LeasedJob | None:
        lease = self.jobs.claim(worker_id, caps)
        return None if lease is None else leased_job(self.jobs.db, lease.job, lease.lease_id, self.jobs.lease_seconds)

    def claim_batch(
        self, worker_id: str, caps: Capabilities, *, max_jobs: int, prefer_model: str | None, slack: float
    ) -> list[LeasedJob]:
        """Several compatible jobs at once, preferring the loaded model (JobStore.claim_batch)."""
        leases = self.jobs.claim_batch(worker_id, caps, max_jobs=max_jobs, prefer_model=prefer_model, slack=slack)
        return [leased_job(self.jobs.db, lease.job, lease.lease_id, self.jobs.lease_seconds) for lease in leases]

    def heartbeat(self, job_id: str, lease_id: str, progress: Progress | None = None) -> HeartbeatReply:
        return self.jobs.heartbeat(job_id, lease_id, progress)

    def complete(self, job_id: str, lease_id: str, images: Sequence[ImageReport], seed: int | None) -> bool:
        return self.jobs.complete(job_id, lease_id, self._write(job_id, images), seed=seed)

    def fail(self, job_id: str, lease_id: str, reason: str) -> bool:
        return self.jobs.fail(job_id, lease_id, reason)

    def acknowledge_cancel(self, job_id: str, lease_id: str, images: Sequence[ImageReport]) -> bool:
        return self.jobs.acknowledge_cancel(job_id, lease_id, self._write(job_id, images))

    def release(self, job_id: str, lease_id: str) -> bool:
        return self.jobs.release(job_id, lease_id)

    def _write(self, job_id: str, images: Sequence[ImageReport]) -> list[PendingImage]:
        return self.images.write_files(job_id, [image_result(image) for image in images])
