"""Timing the fair claim, for the queue benchmarks: each sample claims the fair next job and
completes it, so the queue drains by one per sample as a worker would drain it."""

from __future__ import annotations

import time

from kakumei.store.jobs import JobStore


def claim_times(store: JobStore, samples: int) -> list[float]:
    """Seconds each of `samples` claims took, sorted (a job must be there for every one)."""
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        lease = store.claim("bench")
        times.append(time.perf_counter() - t0)
        assert lease is not None
        store.complete(lease.job.id, lease.lease_id, [])
    return sorted(times)
