"""Generated images: one row each in `images`, the bytes in a PNG file under the data dir, in
chunks in the database (`image_blobs`, migration 0012) or in an S3-compatible bucket
(store/objects.py); setting image_store.

A row's `path` says where its bytes are: "db:<key>" for chunks, "s3:<key>" for an object in
the bucket (`Database.objects`), else a file. Bytes are always
written before the transaction whose row names them commits, and under a fresh name, so a row
never points at missing or half-written bytes: a completion that loses its race leaves no row
and its bytes are deleted (`discard`), and a verifier's replacement is a new blob that its row
names from the commit on (`write_replacements`). Both kinds are reached through the same few
Path methods (`read_bytes`, `is_file`, `exists`, `unlink`), so callers do not care which.
Bytes only one server can reach (its files; with a bucket, also chunks) move at its start to
where new images go (`move_files_in`), each copied before the row that names it commits.

A blob's key is `t<write time, ms, 12 hex digits>.<image id>` (`blob_key`): keys sort by write
time and name the one row that may use them, so `collect_orphans` finds chunks no row names
(a server killed between writing the bytes and committing the row) by a range scan of the
primary key over a time window and one primary-key read of `images` per blob, never a scan
of either table. Keys of the first release of 0012 (32 hex digits, no time) are left alone.
"""

from __future__ import annotations

import io
import json
import time
import uuid
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Union

from kakumei.store.blobs import OBJECT_PREFIX, KeyedBlob
from kakumei.store.db import Database, Transaction

if TYPE_CHECKING:  # boto3 is imported only where a bucket is configured
    from kakumei.store.objects import ObjectBlob

log = logging.getLogger(__name__)

# One chunk row: a read or a write holds about this much of an image in memory at a time.
CHUNK_BYTES = 256 * 1024
DB_PREFIX = "db:"


class DbBlob(KeyedBlob):
    """An image's bytes in `image_blobs`."""

    prefix = DB_PREFIX

    def __init__(self, db: Database, key: str) -> None:
        self.db = db
        self.key = key

    def chunks(self) -> Iterator[bytes]:
        """The bytes, one chunk per query (each its own short read)."""
        seq = 0
        while True:
            with self.db.transaction(write=False) as tx:
                row = tx.one("SELECT data FROM image_blobs WHERE blob_key = ? AND seq = ?", (self.key, seq))
            if row is None:
                return
            yield bytes(row["data"])
            seq += 1

    def read_bytes(self) -> bytes:
        return b"".join(self.chunks())

    def size(self) -> int | None:
        """Bytes stored, or None when there are none."""
        with self.db.transaction(write=False) as tx:
            row = tx.one(
                "SELECT count(*) AS n, sum(length(data)) AS size FROM image_blobs WHERE blob_key = ?", (self.key,)
            )
        return None if row is None or not row["n"] else int(row["size"])

    def is_file(self) -> bool:
        with self.db.transaction(write=False) as tx:
            return tx.one("SELECT 1 AS one FROM image_blobs WHERE blob_key = ? AND seq = 0", (self.key,)) is not None

    def unlink(self, missing_ok: bool = True) -> None:
        with self.db.transaction() as tx:
            delete_blob(tx, self.key)


Blob = Union[Path, DbBlob, "ObjectBlob"]


def blob_at(db: Database | None, location: str) -> Blob:
    """What a row's `path` names."""
    if location.startswith(DB_PREFIX):
        if db is None:
            raise ValueError("an image in the database needs the database to be read")
        return DbBlob(db, location.removeprefix(DB_PREFIX))
    if location.startswith(OBJECT_PREFIX):
        if db is None or db.objects is None:
            raise ValueError("an image in the bucket needs the bucket (setting s3_bucket) to be read")
        from kakumei.store.objects import ObjectBlob

        return ObjectBlob(db.objects, location.removeprefix(OBJECT_PREFIX))
    return Path(location)


def _write_object(bucket: Any, png: bytes | BinaryIO) -> ObjectBlob:
    """A new object in `bucket`: a fresh name, so no row names it before it is whole."""
    from kakumei.store.objects import ObjectBlob

    blob = ObjectBlob(bucket, f"images/{uuid.uuid4().hex}.png")
    blob.bucket.put(blob.key, png)
    return blob


def chunk_statements(key: str, data: bytes) -> list[tuple[str, tuple[Any, ...]]]:
    """The inserts of `data`'s chunks under `key`, for one batch."""
    view = memoryview(data)
    return [
        ("INSERT INTO image_blobs (blob_key, seq, data) VALUES (?, ?, ?)", (key, seq, bytes(view[start:start + CHUNK_BYTES])))
        for seq, start in enumerate(range(0, max(len(view), 1), CHUNK_BYTES))
    ]


def write_chunks(tx: Transaction, key: str, data: bytes | BinaryIO) -> None:
    """`data` (bytes, or a file read a chunk at a time) as chunk rows; an empty image is one
    empty chunk, so that it exists."""
    reader = io.BytesIO(data) if isinstance(data, bytes) else data
    seq = 0
    while True:
        chunk = reader.read(CHUNK_BYTES)
        if not chunk and seq:
            return
        tx.execute("INSERT INTO image_blobs (blob_key, seq, data) VALUES (?, ?, ?)", (key, seq, chunk))
        seq += 1
        if not chunk:
            return


class _ChunkReader(io.RawIOBase):
    """A keyed blob's chunks as a file read front to back (what an upload or `write_chunks`
    reads), one chunk in memory at a time. A blob with no chunk at all is not there:
    FileNotFoundError, as a missing file's open() would say."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")
        self._any = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                if not self._any:
                    raise FileNotFoundError("no bytes stored under this key")
                return 0
            self._any, self._left = True, memoryview(chunk)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()  # a download's body goes back to its connection pool
        super().close()


def _open(blob: Blob) -> BinaryIO:
    """`blob`'s bytes as a file to read (and close)."""
    if isinstance(blob, KeyedBlob):
        return io.BufferedReader(_ChunkReader(blob.chunks()), CHUNK_BYTES)  # type: ignore[return-value]
    return blob.open("rb")


def delete_blob(tx: Transaction, key: str) -> None:
    tx.run("DELETE FROM image_blobs WHERE blob_key = ?", (key,))


# Chunks written this long ago and named by no row are orphans: a completion or a verifier's
# replacement commits its row within seconds of writing its bytes.
ORPHAN_GRACE_SECONDS = 3600.0
# Written in the images folder by move_files_in: files it found in no row, so that the next
# start does not scan the images table for them again. What it lists does not depend on where
# the images go (database or bucket), so it stays true when that setting changes.
MOVE_RECORD = ".not-in-database.json"
# Repoints a row at its moved bytes, only if it still names the old place: a row deleted or
# replaced meanwhile keeps its state.
MOVE_IMAGE = "UPDATE images SET path = ? WHERE id = ? AND path = ?"


def blob_key(image_id: str, at: float | None = None) -> str:
    """A new blob's key for image `image_id`, written now (or at `at`)."""
    return f"t{int((time.time() if at is None else at) * 1000):012x}.{image_id}"


def _key_floor(at: float) -> str:
    """The smallest key of a blob written at `at` or later."""
    return f"t{int(at * 1000):012x}"


def _write_blob(db: Database, image_id: str, png: bytes | BinaryIO) -> DbBlob:
    key = blob_key(image_id)
    # Not durable: no row names these bytes until a later commit does, and a durable commit
    # flushes the WAL before it, these bytes included.
    with db.transaction(durable=False) as tx:
        if isinstance(png, bytes):
            tx.batch(chunk_statements(key, png), last=True)  # the COMMIT in the same round trip
        else:
            write_chunks(tx, key, png)  # a file moving in: read a chunk at a time
    return DbBlob(db, key)


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
    path: Blob
    infotext: str
    metadata: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class PendingImage:
    """An image's bytes written, waiting for its row."""

    id: str
    index: int
    seed: int
    path: Blob
    infotext: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Replacement:
    """A new file for an existing image (same id, so same URL), waiting for its row."""

    image_id: str
    old_path: Blob
    path: Blob
    infotext: str
    metadata: dict[str, Any]


INSERT_IMAGE = """
INSERT INTO images (id, job_id, user_id, idx, seed, path, infotext, metadata, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Only if the row still names the file the replacement was made for (not deleted meanwhile).
REPLACE_IMAGE = "UPDATE images SET path = ?, infotext = ?, metadata = ? WHERE id = ? AND path = ?"

_COLUMNS = "id, job_id, user_id, idx, seed, path, infotext, metadata, created_at"


def _stored(row: dict, db: Database | None) -> StoredImage:
    return StoredImage(
        id=row["id"],
        job_id=row["job_id"],
        user_id=int(row["user_id"]),
        index=int(row["idx"]),
        seed=int(row["seed"]),
        path=blob_at(db, row["path"]),
        infotext=row["infotext"],
        metadata=json.loads(row["metadata"]),
        created_at=float(row["created_at"]),
    )


class ImageStore:
    def __init__(self, db: Database, root: Path, where: Literal["files", "database", "s3"] = "files") -> None:
        if where == "s3" and db.objects is None:
            raise ValueError("images in a bucket need the bucket: Database.objects")
        self.db = db
        self.root = root
        self.where = where

    def write_files(self, job_id: str, images: Sequence[ImageResult]) -> list[PendingImage]:
        """Write a job's PNGs before the transaction that completes it (`insert_rows`)."""
        folder = self.root / job_id[:2]
        if self.where == "files":
            folder.mkdir(parents=True, exist_ok=True)
        pending = []
        for image in images:
            image_id = uuid.uuid4().hex
            path: Blob
            if self.where == "files":
                path = folder / f"{image_id}.png"
                _write_atomically(path, image.png)
            else:
                path = self._write_keyed(image_id, image.png)
            pending.append(
                PendingImage(image_id, image.index, image.seed, path, image.infotext, image.metadata)
            )
        return pending

    def _write_keyed(self, image_id: str, data: bytes | BinaryIO) -> Blob:
        """New bytes of image `image_id` in the database or the bucket, where images go."""
        if self.where == "database":
            return _write_blob(self.db, image_id, data)
        if self.where == "s3":
            return _write_object(self.db.objects, data)
        raise ValueError(f"images go to {self.where}, not to keyed blobs")

    @staticmethod
    def discard(pending: Sequence[PendingImage]) -> None:
        for image in pending:
            image.path.unlink(missing_ok=True)

    @staticmethod
    def insert_rows(tx: Transaction, job_id: str, user_id: int, pending: Sequence[PendingImage]) -> None:
        for sql, params in ImageStore.insert_statements(job_id, user_id, pending):
            tx.execute(sql, params)

    @staticmethod
    def insert_statements(job_id: str, user_id: int, pending: Sequence[PendingImage]) -> list[tuple[str, tuple]]:
        """`insert_rows`'s writes, for the caller to run (in a batch with its own)."""
        now = time.time()
        return [(INSERT_IMAGE, (image.id, job_id, user_id, image.index, image.seed, str(image.path),
                                image.infotext, json.dumps(image.metadata), now)) for image in pending]

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
                path: Blob
                if isinstance(image.path, DbBlob):
                    path = _write_blob(image.path.db, image.id, png)
                elif isinstance(image.path, KeyedBlob):  # an object: a new one in its bucket
                    path = _write_object(image.path.bucket, png)
                else:
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
        return [_stored(r, tx.db) for r in rows]

    def get(self, image_id: str) -> StoredImage | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM images WHERE id = ?", (image_id,))
        return None if row is None else _stored(row, self.db)

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
        return [GalleryImage(_stored(r, self.db), json.loads(r["request"]), r["model"]) for r in rows]

    def delete(self, image_id: str) -> bool:
        """Remove an image's row and its bytes (chunks in the same transaction, a file or an
        object right after it); False when there was no such image.

        The job row stays (who asked for what, and when), so the record survives the file.
        """
        with self.db.transaction() as tx:
            row = tx.one("SELECT path FROM images WHERE id = ?", (image_id,))
            if row is None:
                return False
            tx.run("DELETE FROM images WHERE id = ?", (image_id,))
            blob = blob_at(self.db, row["path"])
            if isinstance(blob, DbBlob):
                delete_blob(tx, blob.key)
        if not isinstance(blob, DbBlob):
            blob.unlink(missing_ok=True)
        return True

    def move_files_in(self, batch: int = 100) -> int:
        """Move the images whose bytes not every server can reach to where new images go (the
        database or the bucket); return how many.

        Run at start when images go to the database or a bucket: each server moves the files
        of its own data folder, and with a bucket the chunks in the database go too. A batch
        at a time: each image's copy is written (uploaded) first, then one transaction points
        the batch's rows at their copies, only those still naming the old place (a row
        deleted or replaced meanwhile keeps its state and its copy is deleted), and the old
        bytes go with that commit (chunks) or after it (files).

        It costs nothing once nothing is left: it first lists the PNGs of the images folder
        (moved ones are gone, with their emptied folders) and with none asks the database
        nothing about files. Files named after their row (`<image id>.png`) are found by
        primary key; only files that are not, and that the last start did not already find
        in no row (MOVE_RECORD, in the images folder), cost a scan of the images table.
        Chunks are found from `image_blobs`' keys (a range scan of its primary key: one empty
        query once none is left), each key's row by primary key.
        """
        if self.where == "files":
            raise ValueError("images go to files here: there is nowhere to move them to")
        moved = self._move_files(batch)
        if self.where == "s3":
            moved += self._move_blobs(batch)
        return moved

    def _move_files(self, batch: int) -> int:
        files = self._image_files()
        if not files:
            (self.root / MOVE_RECORD).unlink(missing_ok=True)
            return 0
        moved = 0
        named = [p for p in files if _is_image_id(p.stem)]
        for start in range(0, len(named), batch):
            paths = named[start:start + batch]
            with self.db.transaction(write=False) as tx:
                marks = ", ".join("?" for _ in paths)
                rows = tx.all(f"SELECT id, path FROM images WHERE id IN ({marks})", [p.stem for p in paths])
            by_id = {p.stem: p for p in paths}
            moved += self._move([r for r in rows if _same_file(r["path"], by_id[r["id"]])])
        left = [p for p in files if p.exists()]
        record = self.root / MOVE_RECORD
        names = sorted(str(p.relative_to(self.root)) for p in left)
        try:
            known = set(json.loads(record.read_text()))
        except (OSError, ValueError):
            known = set()
        if left and not set(names) <= known:
            moved += self._move_by_scan(batch)
            left = [p for p in left if p.exists()]
            names = sorted(str(p.relative_to(self.root)) for p in left)
        if names:
            # Files no row names (or whose row another path names): the next start skips the
            # scan unless a file not listed here appears.
            _write_atomically(record, json.dumps(names).encode())
        else:
            record.unlink(missing_ok=True)
        for folder in {p.parent for p in files}:
            try:
                folder.rmdir()  # only an emptied one goes
            except OSError:
                pass
        return moved

    def _image_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.rglob("*.png") if p.is_file())
        except OSError:
            return []

    def _move_by_scan(self, batch: int) -> int:
        """The rows of every file path, a batch of the images table at a time."""
        moved = 0
        after = ""
        while True:
            with self.db.transaction(write=False) as tx:
                rows = tx.all(
                    "SELECT id, path FROM images WHERE path NOT LIKE 'db:%' AND path NOT LIKE 's3:%' "
                    "AND id > ? ORDER BY id LIMIT ?",
                    (after, batch),
                )
            if not rows:
                return moved
            after = rows[-1]["id"]
            moved += self._move(rows)

    def _move_blobs(self, batch: int) -> int:
        """The rows whose bytes are chunks in the database, a batch of blob keys at a time.
        Chunks no row names are left to `collect_orphans`."""
        moved = 0
        for keys in self._blob_keys("", None, batch):
            with self.db.transaction(write=False) as tx:
                named = _rows_naming(tx, keys)
            moved += self._move([{"id": image_id, "path": DB_PREFIX + key} for key, image_id in named.items()])
        return moved

    def _move(self, rows: Sequence[dict]) -> int:
        """Copy the readable bytes of `rows` (id, path: files, or chunks when moving into the
        bucket) to where new images go, point the rows at their copies in one transaction
        (unless changed meanwhile), then remove the old bytes."""
        copies: list[tuple[dict, Blob, Blob]] = []
        try:
            for row in rows:
                old = blob_at(self.db, row["path"])
                try:
                    with _open(old) as data:  # read a chunk at a time, never the whole image
                        copies.append((row, old, self._write_keyed(row["id"], data)))
                except OSError:
                    continue  # another server's file, or gone: that server moves its own
            if not copies:
                return 0
            repointed = set()
            with self.db.transaction() as tx:
                for row, old, new in copies:
                    if tx.run(MOVE_IMAGE, (str(new), row["id"], row["path"])):
                        repointed.add(row["id"])
                        if isinstance(old, DbBlob):
                            delete_blob(tx, old.key)  # gone exactly when the row names the copy
        except BaseException:
            self._drop_copies(copies)
            raise
        for row, old, new in copies:
            if row["id"] not in repointed:
                new.unlink(missing_ok=True)  # the row went or changed meanwhile
            elif not isinstance(old, DbBlob):
                old.unlink(missing_ok=True)
        if repointed:
            log.info("moved %d image(s) into the %s", len(repointed), "bucket" if self.where == "s3" else "database")
        return len(repointed)

    def _drop_copies(self, copies: Sequence[tuple[dict, Blob, Blob]]) -> None:
        """After a batch failed: delete the copies no row names. A commit whose answer was
        lost may still have repointed rows, so the rows are asked; a database that does not
        answer keeps every copy (stray bytes, never a row naming nothing)."""
        if not copies:
            return
        try:
            with self.db.transaction(write=False) as tx:
                marks = ", ".join("?" for _ in copies)
                named = {r["path"] for r in tx.all(
                    f"SELECT path FROM images WHERE id IN ({marks})", [row["id"] for row, _, _ in copies])}
            for _, _, new in copies:
                if str(new) not in named:
                    new.unlink(missing_ok=True)
        except Exception:  # noqa: BLE001 - whatever the failure, keeping the copies loses nothing
            log.warning("could not tell which of %d moved image copies a row names; kept them all", len(copies))

    def _blob_keys(self, low: str, high: str | None, batch: int) -> Iterator[list[str]]:
        """The blob keys of `image_blobs` after `low` (and before `high`), in order, a batch at
        a time: a range scan of its primary key, each batch its own short read."""
        below = "" if high is None else " AND blob_key < ?"
        while high is None or low < high:
            with self.db.transaction(write=False) as tx:
                keys = [r["blob_key"] for r in tx.all(
                    f"SELECT blob_key FROM image_blobs WHERE blob_key > ?{below} AND seq = 0 "
                    "ORDER BY blob_key LIMIT ?", (low, *([] if high is None else [high]), batch))]
            if not keys:
                return
            low = keys[-1]
            yield keys

    def collect_orphans(self, since: float, *, now: float | None = None, grace: float = ORPHAN_GRACE_SECONDS,
                        batch: int = 500) -> int:
        """Delete the chunks of blobs written from `since` to `now - grace` that no image row
        names (a writer killed before its row committed, a replaced blob whose deletion was
        cut short); return how many blobs went. Costs a primary-key range scan of
        `image_blobs` over that window and one primary-key read of `images` per blob."""
        now = time.time() if now is None else now
        removed = 0
        for keys in self._blob_keys(_key_floor(since), _key_floor(now - grace), batch):
            with self.db.transaction() as tx:
                named = _rows_naming(tx, keys)
                for key in keys:
                    if key not in named:
                        delete_blob(tx, key)
                        removed += 1
        if removed:
            log.info("deleted %d image blob(s) no image names (writes cut short)", removed)
        return removed


def _rows_naming(tx: Transaction, keys: Sequence[str]) -> dict[str, str]:
    """The id of the image row that names each blob of `keys` (keys no row names are left
    out): by primary key, the image id being in the key; the 32-hex-digit keys of the first
    release of 0012, which do not carry it, by path (a scan, for those few)."""
    ids = {key: key.split(".", 1)[1] for key in keys if "." in key}
    named = {}
    if ids:
        marks = ", ".join("?" for _ in ids)
        paths = {r["id"]: r["path"] for r in tx.all(
            f"SELECT id, path FROM images WHERE id IN ({marks})", list(ids.values()))}
        named = {key: image_id for key, image_id in ids.items() if paths.get(image_id) == DB_PREFIX + key}
    legacy = [DB_PREFIX + key for key in keys if "." not in key]
    if legacy:
        marks = ", ".join("?" for _ in legacy)
        for r in tx.all(f"SELECT id, path FROM images WHERE path IN ({marks})", legacy):
            named[r["path"].removeprefix(DB_PREFIX)] = r["id"]
    return named


def _is_image_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _same_file(row_path: str, path: Path) -> bool:
    if row_path.startswith((DB_PREFIX, OBJECT_PREFIX)):
        return False
    if row_path == str(path):
        return True
    try:
        return Path(row_path).resolve() == path.resolve()
    except OSError:
        return False


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
