"""The generations handed to AI Horde workers (migration 0013), one row per image.

The Horde names each image of a job with its own id; a Horde worker uploads the image to a URL
the pop handed out and then submits the id with its seed. `HordeStore` is the only writer of
`horde_generations`. Rows belong to one lease: a lease that is lost leaves them unmatched, and
they go when the job completes or when a newer lease of the job is handed out.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from kakumei.store.db import Database


@dataclass(frozen=True)
class HordeGeneration:
    id: str
    job_id: str
    lease_id: str
    index: int
    worker_id: int
    upload_token: str
    has_upload: bool
    seed: int | None
    submitted_state: str | None


_COLUMNS = (
    "id, job_id, lease_id, idx, worker_id, upload_token, upload IS NOT NULL AS has_upload, seed, submitted_state"
)


def _generation(row: dict) -> HordeGeneration:
    return HordeGeneration(
        id=row["id"], job_id=row["job_id"], lease_id=row["lease_id"], index=int(row["idx"]),
        worker_id=int(row["worker_id"]), upload_token=row["upload_token"], has_upload=bool(row["has_upload"]),
        seed=None if row["seed"] is None else int(row["seed"]), submitted_state=row["submitted_state"],
    )


class HordeStore:
    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def hand_out(self, job_id: str, lease_id: str, worker_id: int, count: int) -> list[HordeGeneration]:
        """One generation per image of a new lease; rows of the job's earlier leases go."""
        now = self.clock()
        out = []
        with self.db.transaction() as tx:
            tx.run("DELETE FROM horde_generations WHERE job_id = ?", (job_id,))
            # In index order: horde_sdk sorts a pop's ids (and, apart, its upload URLs, which
            # hold the ids), so the nth id it hands its worker must be image n.
            for index, gen_id in enumerate(sorted(uuid.uuid4().hex for _ in range(count))):
                token = secrets.token_urlsafe(24)
                tx.run(
                    "INSERT INTO horde_generations (id, job_id, lease_id, idx, worker_id, upload_token, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (gen_id, job_id, lease_id, index, worker_id, token, now),
                )
                out.append(HordeGeneration(gen_id, job_id, lease_id, index, worker_id, token, False, None, None))
        return out

    def get(self, gen_id: str) -> HordeGeneration | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM horde_generations WHERE id = ?", (gen_id,))
        return None if row is None else _generation(row)

    def of_lease(self, job_id: str, lease_id: str) -> list[HordeGeneration]:
        with self.db.transaction(write=False) as tx:
            rows = tx.all(
                f"SELECT {_COLUMNS} FROM horde_generations WHERE job_id = ? AND lease_id = ? ORDER BY idx",
                (job_id, lease_id),
            )
        return [_generation(r) for r in rows]

    def upload(self, gen_id: str, token: str, data: bytes) -> bool:
        """Keep an uploaded image; False when the id and token do not name a generation."""
        with self.db.transaction() as tx:
            row = tx.one("SELECT upload_token FROM horde_generations WHERE id = ? {for_update}", (gen_id,))
            if row is None or not secrets.compare_digest(row["upload_token"], token):
                return False
            tx.run("UPDATE horde_generations SET upload = ? WHERE id = ?", (data, gen_id))
        return True

    def uploaded(self, gen_id: str) -> bytes | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one("SELECT upload FROM horde_generations WHERE id = ?", (gen_id,))
        return None if row is None or row["upload"] is None else bytes(row["upload"])

    def submit(self, gen_id: str, seed: int, state: str, data: bytes | None) -> None:
        """Record a worker's submit of one generation (with its image when sent inline)."""
        with self.db.transaction() as tx:
            if data is not None:
                tx.run("UPDATE horde_generations SET upload = ? WHERE id = ?", (data, gen_id))
            tx.run("UPDATE horde_generations SET seed = ?, submitted_state = ? WHERE id = ?", (seed, state, gen_id))

    def add_request(self, job_id: str, *, inline: bool) -> str:
        """The Horde request id of a job queued through /api/v2 (random: it is the key)."""
        request_id = uuid.uuid4().hex
        with self.db.transaction() as tx:
            tx.run(
                "INSERT INTO horde_requests (id, job_id, inline, created_at) VALUES (?, ?, ?, ?)",
                (request_id, job_id, int(inline), self.clock()),
            )
        return request_id

    def request(self, request_id: str) -> tuple[str, bool] | None:
        """(job id, whether images go inline) of a Horde request id."""
        with self.db.transaction(write=False) as tx:
            row = tx.one("SELECT job_id, inline FROM horde_requests WHERE id = ?", (request_id,))
        return None if row is None else (row["job_id"], bool(row["inline"]))

    def forget(self, job_id: str) -> None:
        """The job is done with: its uploads are in the image store, or nobody needs them."""
        with self.db.transaction() as tx:
            tx.run("DELETE FROM horde_generations WHERE job_id = ?", (job_id,))
