"""Images kept in the database: chunked bytes, deleted with their image, and files moved in
by the servers that can read them."""

from __future__ import annotations

import time

import pytest

from kakumei.fairness.cost import request_cost
from kakumei.store.db import Database
from kakumei.store.images import CHUNK_BYTES, MOVE_RECORD, ORPHAN_GRACE_SECONDS, DbBlob, ImageResult, ImageStore
from kakumei.store.jobs import NewJob

from tests.store.test_store_images import REQUEST, completed, leased


def blob_rows(stores) -> int:
    with stores.db.transaction(write=False) as tx:
        return int(tx.scalar("SELECT count(*) AS n FROM image_blobs"))


@pytest.mark.parametrize("stores", ["database"], indirect=True)
def test_a_large_image_is_kept_in_chunks_and_deleting_it_deletes_them(stores) -> None:
    big = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # two full chunks and a bit
    lease = leased(stores)
    files = stores.images.write_files(lease.job.id, [ImageResult(png=big, seed=1, index=0)])
    assert stores.jobs.complete(lease.job.id, lease.lease_id, files, seed=1)
    [image] = stores.images.for_job(lease.job.id)
    assert isinstance(image.path, DbBlob) and str(image.path).startswith("db:")
    assert [len(c) for c in image.path.chunks()] == [CHUNK_BYTES, CHUNK_BYTES, 768]
    assert image.path.read_bytes() == big and image.path.size() == len(big)
    assert blob_rows(stores) == 3
    assert stores.images.delete(image.id)
    assert blob_rows(stores) == 0 and not image.path.exists() and image.path.size() is None


@pytest.mark.parametrize("stores", ["files"], indirect=True)
def test_files_move_into_the_database_and_unreadable_ones_stay(stores, tmp_path) -> None:
    made = []
    for n in range(3):
        user = stores.users.add(f"u{n}")[0]
        stores.jobs.submit(NewJob(user.id, REQUEST, "m", request_cost(REQUEST, "m")))
        lease = stores.jobs.claim("w")
        png = f"png {len(made)}".encode()
        files = stores.images.write_files(lease.job.id, [ImageResult(png=png, seed=1, index=0)])
        assert stores.jobs.complete(lease.job.id, lease.lease_id, files, seed=1)
        made.append((files[0], png))
    elsewhere, _ = made[2]
    elsewhere.path.rename(tmp_path / "elsewhere.png")  # another server's folder: not readable here
    into_db = ImageStore(stores.db, stores.images.root, "database")
    assert into_db.move_files_in(batch=2) == 2
    for pending, png in made[:2]:
        moved = into_db.get(pending.id)
        assert isinstance(moved.path, DbBlob) and moved.path.read_bytes() == png
        assert not pending.path.exists()  # the file went once its copy's row committed
    assert into_db.get(elsewhere.id).path == elsewhere.path  # still names the file
    assert into_db.move_files_in() == 0


class CountingDatabase(Database):
    """The real database, counting the transactions asked of it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.transactions = 0

    def transaction(self, write: bool = True, **options):  # type: ignore[override]
        self.transactions += 1
        return super().transaction(write, **options)


@pytest.mark.parametrize("stores", ["files"], indirect=True)
def test_moving_files_in_costs_nothing_once_nothing_is_left(stores, database_url) -> None:
    made = completed(stores, [b"png 0", b"png 1"])
    stray = stores.images.root / "ab" / "left-by-hand.png"  # a file no row names
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"stray")
    db = CountingDatabase(database_url)
    try:
        into_db = ImageStore(db, stores.images.root, "database")
        assert into_db.move_files_in() == 2
        assert all(isinstance(into_db.get(p.id).path, DbBlob) for p in made)
        assert not made[0].path.parent.exists() or made[0].path.parent == stray.parent  # emptied folders go
        assert stray.exists()  # not ours to delete
        # the next starts: the stray file is known to be in no row; nothing is asked
        db.transactions = 0
        assert into_db.move_files_in() == 0 and into_db.move_files_in() == 0
        assert db.transactions == 0
        # a new file not named after a row: one more scan, then quiet again
        (stores.images.root / "cd").mkdir()
        (stores.images.root / "cd" / "another.png").write_bytes(b"another")
        assert into_db.move_files_in() == 0 and db.transactions > 0
        db.transactions = 0
        assert into_db.move_files_in() == 0 and db.transactions == 0
        # nothing at all in the folder: nothing asked, and no record left behind
        stray.unlink()
        (stores.images.root / "cd" / "another.png").unlink()
        assert into_db.move_files_in() == 0 and db.transactions == 0
        assert not (stores.images.root / MOVE_RECORD).exists()
    finally:
        db.close()


@pytest.mark.parametrize("stores", ["database"], indirect=True)
def test_chunks_no_row_names_are_collected_after_the_grace(stores) -> None:
    def leased_by(name: str):
        user = stores.users.add(name)[0]
        stores.jobs.submit(NewJob(user.id, REQUEST, "m", request_cost(REQUEST, "m")))
        return stores.jobs.claim("w")

    kept = leased_by("kept")
    files = stores.images.write_files(kept.job.id, [ImageResult(png=b"kept", seed=1, index=0)])
    assert stores.jobs.complete(kept.job.id, kept.lease_id, files, seed=1)
    [image] = stores.images.for_job(kept.job.id)
    # a server killed between writing a job's bytes and committing its row
    cut = leased_by("cut")
    orphan = stores.images.write_files(cut.job.id, [ImageResult(png=b"orphan" * 100_000, seed=1, index=0)])
    assert orphan[0].path.exists() and blob_rows(stores) == 1 + 3
    # a verifier's replacement committed, the old bytes' deletion cut short
    written = ImageStore.write_replacements([image], {0: (b"fixed", "", {})})
    with stores.db.transaction() as tx:
        assert ImageStore.replace_rows(tx, written)
    [image] = stores.images.for_job(kept.job.id)
    now = time.time()
    assert stores.images.collect_orphans(now - 60, now=now) == 0  # within the grace: may still commit
    later = now + ORPHAN_GRACE_SECONDS + 1
    assert stores.images.collect_orphans(now - 60, now=later) == 2
    assert not orphan[0].path.exists() and not written[0].old_path.exists() and blob_rows(stores) == 1
    assert image.path.read_bytes() == b"fixed"
    assert stores.images.collect_orphans(now - 60, now=later) == 0
    # outside the window asked about: left for the pass that covers it
    stale = leased_by("stale")
    again = stores.images.write_files(stale.job.id, [ImageResult(png=b"again", seed=1, index=0)])
    assert stores.images.collect_orphans(0, now=now - 10) == 0 and again[0].path.exists()


@pytest.mark.parametrize("stores", ["files", "database"], indirect=True)
def test_a_row_changed_between_upload_and_repoint_keeps_its_state(stores, s3_place) -> None:
    """Moving into a bucket: an image deleted after its copy was uploaded stays deleted, one
    replaced meanwhile keeps its replacement, and neither's uploaded copy is left behind."""
    stores.db.objects = s3_place.bucket()
    kept, deleted, replaced = completed(stores, [b"png 0", b"png 1", b"png 2"])
    into_bucket = ImageStore(stores.db, stores.images.root, "s3")
    upload = into_bucket._write_keyed
    uploaded = {}
    to_change = {deleted.id, replaced.id}

    def then_change(image_id: str, data):  # the real upload, then another server's change
        copy = upload(image_id, data)
        uploaded.setdefault(image_id, copy)  # the first copy of each
        assert str(copy).removeprefix("s3:") in s3_place.keys()
        if image_id not in to_change:
            return copy
        to_change.remove(image_id)
        if image_id == deleted.id:
            assert stores.images.delete(image_id)
        else:
            [current] = stores.images.for_job(stores.images.get(image_id).job_id)
            written = ImageStore.write_replacements([current], {0: (b"fixed", "fixed", {})})
            with stores.db.transaction() as tx:
                applied = ImageStore.replace_rows(tx, written)
            ImageStore.settle_replacements(written, applied)
        return copy

    into_bucket._write_keyed = then_change  # type: ignore[method-assign]
    first = into_bucket.move_files_in(batch=10)
    assert set(uploaded) == {kept.id, deleted.id, replaced.id}
    assert into_bucket.get(deleted.id) is None and not deleted.path.exists()
    moved = into_bucket.get(kept.id)
    assert moved.path == uploaded[kept.id] and moved.path.read_bytes() == b"png 0"
    assert not kept.path.exists()
    # The replacement keeps its row. Written as chunks, it comes after the pass's keys and
    # moves in the same pass; written as a file, at the next start.
    later = into_bucket.move_files_in()
    assert (first, later) == ((2, 0) if stores.images.where == "database" else (1, 1))
    after = into_bucket.get(replaced.id)
    assert after.infotext == "fixed" and after.path.read_bytes() == b"fixed"
    # the copies made for the rows that changed went; so did the old bytes
    assert s3_place.keys() == sorted(str(i.path).removeprefix("s3:") for i in (moved, after))
    assert uploaded[replaced.id] != after.path  # the copy made before the replacement is gone
    assert blob_rows(stores) == 0 and [p for p in stores.images.root.rglob("*") if p.is_file()] == []
