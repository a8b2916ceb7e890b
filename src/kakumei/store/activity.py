"""A caller's jobs in flight, light enough to poll: what /sdapi/v1/progress, interrupt and skip
act on. Reads only small columns (never a job's request, which may carry base64 images)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from kakumei.store.db import Database

# Running jobs first (partial index jobs_leased keeps them few), then the user's queue in the
# order they will be served (jobs_queued_by_user). `{addr}` narrows anonymous callers to their
# own address.
ACTIVE_RUNNING = """
SELECT id, state, progress_step, progress_total, cancel_requested, created_at FROM jobs
WHERE state IN ('leased', 'running') AND user_id = ? {addr}
ORDER BY seq
"""

ACTIVE_QUEUED = """
SELECT id, state, progress_step, progress_total, cancel_requested, created_at FROM jobs
WHERE user_id = ? AND state = 'queued' {addr}
ORDER BY priority DESC, seq
LIMIT 100
"""

# A running job's newest progress events, newest first; the first with a preview wins.
RECENT_PROGRESS = """
SELECT data FROM job_events WHERE job_id = ? AND kind = 'progress' ORDER BY id DESC LIMIT 20
"""


@dataclass(frozen=True)
class ActiveJob:
    id: str
    state: str
    step: int | None
    total: int | None
    cancel_requested: bool
    created_at: float


def active_jobs(db: Database, user_id: int, client_addr: str | None = None) -> list[ActiveJob]:
    """The user's unfinished jobs: running ones first, then queued ones in serving order.
    With `client_addr`, only those submitted from that address (anonymous callers)."""
    addr_sql = "AND client_addr = ?" if client_addr is not None else ""
    params: tuple = (user_id, client_addr) if client_addr is not None else (user_id,)
    with db.transaction(write=False) as tx:
        rows = tx.all(ACTIVE_RUNNING.replace("{addr}", addr_sql), params)
        rows += tx.all(ACTIVE_QUEUED.replace("{addr}", addr_sql), params)
    return [
        ActiveJob(
            id=r["id"],
            state=r["state"],
            step=r["progress_step"],
            total=r["progress_total"],
            cancel_requested=bool(r["cancel_requested"]),
            created_at=float(r["created_at"]),
        )
        for r in rows
    ]


def latest_preview(db: Database, job_id: str) -> str | None:
    """The newest progress preview of a job (a PNG data URL), or None."""
    with db.transaction(write=False) as tx:
        rows = tx.all(RECENT_PROGRESS, (job_id,))
    for row in rows:
        preview = json.loads(row["data"]).get("preview")
        if preview:
            return str(preview)
    return None
