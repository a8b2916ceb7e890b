"""Images and input images in an S3-compatible bucket (moto's server, over real HTTP): an
image is one object, read a chunk at a time, whose row names it; deleting the image deletes
the object; input images go to the bucket by content, their rows keep no bytes."""

from __future__ import annotations

import base64

import pytest

from kakumei.store.images import ImageResult
from kakumei.store.inputs import InputStore, MissingInput
from kakumei.store.objects import CHUNK_BYTES, ObjectBlob

from tests.store.test_store_images import leased

pytestmark = pytest.mark.parametrize("stores", ["s3"], indirect=True)


def test_an_image_is_one_object_read_in_chunks_and_deleted_with_its_image(stores, s3_place) -> None:
    big = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # two chunks and a bit
    lease = leased(stores)
    files = stores.images.write_files(lease.job.id, [ImageResult(png=big, seed=1, index=0)])
    assert stores.jobs.complete(lease.job.id, lease.lease_id, files, seed=1)
    [image] = stores.images.for_job(lease.job.id)
    assert isinstance(image.path, ObjectBlob) and str(image.path) == "s3:" + image.path.key
    assert s3_place.keys() == [image.path.key] and image.path.key.startswith("images/")
    assert [len(c) for c in image.path.chunks()] == [CHUNK_BYTES, CHUNK_BYTES, 768]
    assert image.path.read_bytes() == big and image.path.size() == len(big) and image.path.exists()
    assert stores.images.delete(image.id)
    assert s3_place.keys() == [] and not image.path.exists() and image.path.size() is None
    assert list(image.path.chunks()) == []
    with pytest.raises(FileNotFoundError):
        image.path.read_bytes()


def test_input_images_go_to_the_bucket_once_and_come_back(stores, s3_place) -> None:
    inputs = InputStore(stores.db)
    raw_a, raw_b = b"\x89PNG one", b"\x89PNG two"
    with stores.db.transaction() as tx:
        refs = inputs.put_many(tx, [raw_a, raw_b, raw_a])
    assert refs[0] == refs[2] != refs[1]
    assert s3_place.keys() == sorted("inputs/" + r.removeprefix("sha256:") for r in refs[:2])
    with stores.db.transaction(write=False) as tx:
        rows = tx.all("SELECT data, bytes FROM input_images ORDER BY bytes")
    assert [(bytes(r["data"]), int(r["bytes"])) for r in rows] == [(b"", len(raw_a)), (b"", len(raw_b))]
    assert inputs.get_many(refs) == {refs[0]: base64.b64encode(raw_a).decode(), refs[1]: base64.b64encode(raw_b).decode()}
    s3_place.client.delete_object(Bucket=s3_place.name, Key="inputs/" + refs[1].removeprefix("sha256:"))
    with pytest.raises(MissingInput):
        inputs.get_many([refs[1]])
