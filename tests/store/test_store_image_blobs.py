"""Images kept in the database: chunked bytes, deleted with their image, and files moved in
by the servers that can read them."""

from __future__ import annotations

import pytest

from kakumei.fairness.cost import request_cost
from kakumei.store.images import CHUNK_BYTES, DbBlob, ImageResult, ImageStore
from kakumei.store.jobs import NewJob

from tests.store.test_store_images import REQUEST, leased


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
