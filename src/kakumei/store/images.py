"""Generated images: PNG files under the data dir, one row each in `images`.

A file is always written before the transaction whose row names it commits, and under a
fresh name, so a row never points at a missing or half-written file: a completion that
loses its race leaves no row and its files are deleted (`discard`), and a verifier's
replacement is a new file that its row names from the commit on (`write_replacements`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class Replacement:
    """A new file for an existing image (same id, so same URL), waiting for its row."""

    image_id: str
    old_path: Path
    path: Path
    infotext: str
    metadata: dict[str, Any]


INSERT_IMAGE = """
INSERT INTO images (id, job_id, user_id, idx, seed, path, infotext, metadata, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Only if the row still names the file the replacement was made for (not deleted meanwhile).
REPLACE_IMAGE = "UPDATE images SET path = ?, infotext = ?, metadata = ? WHERE id = ? AND path = ?"

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
        """Write a job's PNGs before the transaction that completes it (`insert_rows`)."""
        folder = self.root / job_id[:2]
        folder.mkdir(parents=True, exist_ok=True)
        pending = []
        for image in images:
            image_id = uuid.uuid4().hex
            path = folder / f"{image_id}.png"
            _write_atomically(path, image.png)
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

    # -- replacing a job's images (a verifier's re-run after a mismatch) --------------------

    @staticmethod
    def write_replacements(
        current: Sequence[StoredImage], corrected: Mapping[int, tuple[bytes, str, dict[str, Any]]]
    ) -> list[Replacement]:
        """Write new files (index -> png, infotext, metadata) next to the current ones, before
        the transaction that points the rows at them (`replace_rows`)."""
        written = []
        for image in current:
            if image.index in corrected:
                png, infotext, metadata = corrected[image.index]
                path = image.path.parent / f"{uuid.uuid4().hex}.png"
                _write_atomically(path, png)
                written.append(Replacement(image.id, image.path, path, infotext, metadata))
        return written

    @staticmethod
    def replace_rows(tx: Transaction, replacements: Sequence[Replacement]) -> list[Replacement]:
        """Point the rows at their new files; return the replacements whose row was there."""
        applied = []
        for r in replacements:
            params = (str(r.path), r.infotext, json.dumps(r.metadata), r.image_id, str(r.old_path))
            if tx.run(REPLACE_IMAGE, params):
                applied.append(r)
        return applied

    @staticmethod
    def settle_replacements(written: Sequence[Replacement], applied: Sequence[Replacement]) -> None:
        """After the transaction: the files no row names any more go (old ones of the applied
        replacements, new ones of the rest, all new ones when it rolled back: `applied` empty)."""
        done = {r.image_id for r in applied}
        for r in written:
            (r.old_path if r.image_id in done else r.path).unlink(missing_ok=True)

    @staticmethod
    def job_images(tx: Transaction, job_id: str) -> list[StoredImage]:
        rows = tx.all(f"SELECT {_COLUMNS} FROM images WHERE job_id = ? ORDER BY idx", (job_id,))
        return [_stored(r) for r in rows]

    def get(self, image_id: str) -> StoredImage | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM images WHERE id = ?", (image_id,))
        return None if row is None else _stored(row)

    def for_job(self, job_id: str) -> list[StoredImage]:
        with self.db.transaction(write=False) as tx:
            return self.job_images(tx, job_id)

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


def _write_atomically(path: Path, png: bytes) -> None:
    # A reader of the final name sees the whole file or none of it.
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)


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
