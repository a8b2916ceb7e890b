"""Where a worker gets jobs and sends results: the claim/heartbeat/complete protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kakumei.server.inputs import resolve_lease, resolve_leases
from kakumei.store.images import ImageResult, ImageStore
from kakumei.store.jobs import Capabilities, Heartbeat, JobStore, Lease


class JobSource(Protocol):
    """Every call after `claim` names the lease; a call on a lost lease changes nothing."""

    def claim(self, worker_id: str, caps: Capabilities) -> Lease | None: ...

    def heartbeat(
        self,
        job_id: str,
        lease_id: str,
        *,
        step: int | None = None,
        total: int | None = None,
        image_offset: int = 0,
        preview: str | None = None,
    ) -> Heartbeat: ...

    def complete(self, job_id: str, lease_id: str, images: Sequence[ImageResult], seed: int | None) -> bool: ...

    def fail(self, job_id: str, lease_id: str, reason: str) -> bool: ...

    def acknowledge_cancel(self, job_id: str, lease_id: str, images: Sequence[ImageResult]) -> bool: ...

    def release(self, job_id: str, lease_id: str) -> bool: ...


class StoreJobSource:
    """The protocol on the store directly, for the worker inside the server process."""

    def __init__(self, jobs: JobStore, images: ImageStore) -> None:
        self.jobs = jobs
        self.images = images

    def claim(self, worker_id: str, caps: Capabilities) -> Lease | None:
        lease = self.jobs.claim(worker_id, caps)
        return None if lease is None else resolve_lease(self.jobs.db, lease)

    def claim_batch(
        self, worker_id: str, caps: Capabilities, *, max_jobs: int, prefer_model: str | None, slack: float
    ) -> list[Lease]:
        """Several compatible jobs at once, preferring the loaded model (JobStore.claim_batch).
        Optional in the protocol: a source without it gives one job per claim."""
        leases = self.jobs.claim_batch(worker_id, caps, max_jobs=max_jobs, prefer_model=prefer_model, slack=slack)
        return resolve_leases(self.jobs.db, leases)

    def heartbeat(
        self,
        job_id: str,
        lease_id: str,
        *,
        step: int | None = None,
        total: int | None = None,
        image_offset: int = 0,
        preview: str | None = None,
    ) -> Heartbeat:
        return self.jobs.heartbeat(
            job_id, lease_id, step=step, total=total, image_offset=image_offset, preview=preview
        )

    def complete(self, job_id: str, lease_id: str, images: Sequence[ImageResult], seed: int | None) -> bool:
        return self.jobs.complete(job_id, lease_id, self.images.write_files(job_id, images), seed=seed)

    def fail(self, job_id: str, lease_id: str, reason: str) -> bool:
        return self.jobs.fail(job_id, lease_id, reason)

    def acknowledge_cancel(self, job_id: str, lease_id: str, images: Sequence[ImageResult]) -> bool:
        return self.jobs.acknowledge_cancel(job_id, lease_id, self.images.write_files(job_id, images))

    def release(self, job_id: str, lease_id: str) -> bool:
        return self.jobs.release(job_id, lease_id)
