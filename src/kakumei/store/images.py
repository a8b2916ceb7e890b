"""Generated images: PNG files under the data dir, one row each in `images`.

Files are written before the completing transaction and named by a fresh id, so a
completion that loses its race leaves at most an unreferenced file, never a wrong image.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kakumei.store.db import Database, Transaction


@dataclass(frozen=True)
class ImageResult:
    """One image as a worker reports it."""

    png: bytes
    seed: int
    index: int
    infotext: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredImage:
    id: str
    job_id: str
    user_id: int
    index: int
    seed: int
    path: Path
    infotext: str
    metadata: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class PendingImage:
    """An image written to disk, waiting for its row."""

    id: str
    index: int
    seed: int
    path: Path
    infotext: str
    metadata: dict[str, Any]


INSERT_IMAGE = """
INSERT INTO images (id, job_id, user_id, idx, seed, path, infotext, metadata, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_COLUMNS = "id, job_id, user_id, idx, seed, path, infotext, metadata, created_at"


def _stored(row: dict) -> StoredImage:
    return StoredImage(
        id=row["id"],
        job_id=row["job_id"],
        user_id=int(row["user_id"]),
        index=int(row["idx"]),
        seed=int(row["seed"]),
        path=Path(row["path"]),
        infotext=row["infotext"],
        metadata=json.loads(row["metadata"]),
        created_at=float(row["created_at"]),
    )


class ImageStore:
    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root

    def write_files(self, job_id: str, images: Sequence[ImageResult]) -> list[PendingImage]:
        folder = self.root / job_id[:2]
        folder.mkdir(parents=True, exist_ok=True)
        pending = []
        for image in images:
            image_id = uuid.uuid4().hex
            path = folder / f"{image_id}.png"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(image.png)
            tmp.replace(path)
            pending.append(
                PendingImage(image_id, image.index, image.seed, path, image.infotext, image.metadata)
            )
        return pending

    @staticmethod
    def discard(pending: Sequence[PendingImage]) -> None:
        for image in pending:
            image.path.unlink(missing_ok=True)

    @staticmethod
    def insert_rows(tx: Transaction, job_id: str, user_id: int, pending: Sequence[PendingImage]) -> None:
        now = time.time()
        for image in pending:
            tx.execute(
                INSERT_IMAGE,
                (image.id, job_id, user_id, image.index, image.seed, str(image.path),
                 image.infotext, json.dumps(image.metadata), now),
            )

    def get(self, image_id: str) -> StoredImage | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM images WHERE id = ?", (image_id,))
        return None if row is None else _stored(row)

    def for_job(self, job_id: str) -> list[StoredImage]:
        with self.db.transaction(write=False) as tx:
            rows = tx.all(f"SELECT {_COLUMNS} FROM images WHERE job_id = ? ORDER BY idx", (job_id,))
        return [_stored(r) for r in rows]

    # -- gallery (the web UI's "my images") -----------------------------------------------

    def for_user(self, user_id: int, *, client_addr: str | None = None, limit: int = 100) -> list[GalleryImage]:
        """A user's images, newest job first, each with its job's request (the recipe).

        Walks the user's jobs newest first (jobs_by_user) and their images by (job_id, idx),
        so the cost follows `limit`, not the size of the history. Anonymous visitors share a
        user: `client_addr` keeps each to what its own address made.
        """
        sql = SELECT_GALLERY
        params: list[Any] = [user_id]
        if client_addr is not None:
            sql = sql.replace("{addr}", "AND j.client_addr = ?")
            params.append(client_addr)
        else:
            sql = sql.replace("{addr}", "")
        params.append(limit)
        with self.db.transaction(write=False) as tx:
            rows = tx.all(sql, params)
        return [GalleryImage(_stored(r), json.loads(r["request"]), r["model"]) for r in rows]

    def delete(self, image_id: str) -> bool:
        """Remove an image's row, then its file; False when there was no such image.

        The job row stays (who asked for what, and when), so the record survives the file.
        """
        with self.db.transaction() as tx:
            row = tx.one("SELECT path FROM images WHERE id = ?", (image_id,))
            if row is None:
                return False
            tx.run("DELETE FROM images WHERE id = ?", (image_id,))
        Path(row["path"]).unlink(missing_ok=True)
        return True


@dataclass(frozen=True)
class GalleryImage:
    image: StoredImage
    request: dict[str, Any]
    model: str


SELECT_GALLERY = f"""
SELECT {", ".join("i." + c.strip() for c in _COLUMNS.split(","))}, j.request, j.model
FROM jobs j JOIN images i ON i.job_id = j.id
WHERE j.user_id = ? {{addr}}
ORDER BY j.seq DESC, i.idx
LIMIT ?
"""
