"""Images in an S3-compatible bucket (settings s3_*), from outside: two real `kakumei serve`
processes with separate data folders, one PostgreSQL database and one bucket on a real
S3-protocol HTTP server (moto's). Each serves the images the other made, input images reach
the worker through the bucket, deleting an image removes its object, and images stored before
the bucket (files, chunks in the database) move into it when a server starts.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imagehelpers import noise_b64
from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest
from kakumei.store.db import Database
from kakumei.store.images import CHUNK_BYTES, ImageResult, ImageStore
from kakumei.store.jobs import JobStore, NewJob
from kakumei.store.users import UserStore
from tests.fixtures.db import migrated
from tests.support import ServeProcesses, wait_done

pytestmark = pytest.mark.postgres

JOB = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def homes(kakumei_home: Path, tmp_path: Path) -> list[Path]:
    """Two data folders of their own, each with the session's tiny model."""
    made = []
    for name in ("a", "b"):
        home = tmp_path / f"home-{name}"
        home.mkdir()
        (home / "models").symlink_to(kakumei_home / "models")
        made.append(home)
    return made


@pytest.fixture
def servers(s3_place, tmp_path: Path) -> Iterator[ServeProcesses]:
    env = {"KAKUMEI_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "KAKUMEI_KEY_RATE_PER_MINUTE": "0",
           "KAKUMEI_IP_RATE_PER_MINUTE": "0",
           **{f"KAKUMEI_{name.upper()}": value for name, value in s3_place.settings().items()}}
    running = ServeProcesses(tmp_path, env)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    """The servers' database, from the test's side."""
    with migrated(postgres_url) as shared:
        yield shared


def files_under(folder: Path) -> list[Path]:
    images = folder / "images"
    return [p for p in images.rglob("*") if p.is_file()] if images.exists() else []


def test_two_servers_serve_each_others_images_from_one_bucket(
    servers: ServeProcesses, s3_place, homes: list[Path], db: Database, postgres_url: str
) -> None:
    _, key = UserStore(db).add("alice")
    alice = {"Authorization": f"Bearer {key}"}
    options = ["--database", postgres_url, "--model", "kakumei:tiny"]
    a = servers.start(options, KAKUMEI_HOME=str(homes[0]))  # runs the jobs
    b = servers.start([*options, "--no-local-worker"], KAKUMEI_HOME=str(homes[1]))
    init = noise_b64(64, 7)
    with httpx.Client(base_url=b, headers=alice, timeout=60) as on_b, \
            httpx.Client(base_url=a, headers=alice, timeout=60) as on_a:
        # Submitted to b, with an input image: its bytes go to the bucket, and a's worker
        # reads them from there.
        created = on_b.post("/api/v1/jobs", json={**JOB, "init_images": [init], "denoising_strength": 0.5})
        assert created.status_code == 201, created.text
        job = wait_done(on_a, created.json()["id"], timeout=180)
        assert job["state"] == "succeeded", job
        url = job["images"][0]["url"]
        from_a, from_b = on_a.get(url), on_b.get(url)
        assert from_a.status_code == from_b.status_code == 200
        assert from_a.content == from_b.content and from_a.content.startswith(PNG_MAGIC)
        assert from_b.headers["content-length"] == str(len(from_b.content))

        keys = s3_place.keys()
        with db.transaction(write=False) as tx:
            [row] = tx.all("SELECT path FROM images WHERE job_id = ?", (job["id"],))
            [stored] = tx.all("SELECT data, bytes FROM input_images")
        assert row["path"].startswith("s3:") and row["path"].removeprefix("s3:") in keys
        raw = base64.b64decode(init)
        assert bytes(stored["data"]) == b"" and int(stored["bytes"]) == len(raw)
        [input_key] = [k for k in keys if k.startswith("inputs/")]
        assert s3_place.client.get_object(Bucket=s3_place.name, Key=input_key)["Body"].read() == raw
        assert files_under(homes[0]) == files_under(homes[1]) == []  # nothing in the data folders

        # The APIs that answer with the image itself read it from the bucket too.
        answer = on_b.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 2})
        assert answer.status_code == 200, answer.text
        assert base64.b64decode(answer.json()["images"][0]).startswith(PNG_MAGIC)

        # Deleted through b: the object goes, and neither server has the image any more.
        image_id = job["images"][0]["id"]
        assert on_b.delete(f"/api/v1/images/{image_id}").status_code == 204
        assert row["path"].removeprefix("s3:") not in s3_place.keys()
        assert on_a.get(url).status_code == on_b.get(url).status_code == 404


def test_images_stored_before_the_bucket_move_into_it_when_servers_start(
    servers: ServeProcesses, s3_place, homes: list[Path], db: Database, postgres_url: str
) -> None:
    alice, key = UserStore(db).add("alice")
    request = GenerationRequest(prompt="a fox", width=64, height=64, steps=2, seed=1)
    made: dict[str, bytes] = {}
    # Before the bucket: images in server a's data folder, and images in chunks.
    for where, count in (("files", 3), ("database", 2)):
        images = ImageStore(db, homes[0] / "images", where)
        jobs = JobStore(db, images)
        for n in range(count):
            jobs.submit(NewJob(alice.id, request, "m", request_cost(request, "m")))
            lease = jobs.claim("w")
            png = PNG_MAGIC + bytes([n]) * (CHUNK_BYTES + 1000)  # more than one chunk
            [pending] = images.write_files(lease.job.id, [ImageResult(png=png, seed=1, index=0)])
            assert jobs.complete(lease.job.id, lease.lease_id, [pending], seed=1)
            made[pending.id] = png
    assert len(files_under(homes[0])) == 3

    options = ["--database", postgres_url, "--model", "kakumei:tiny", "--no-local-worker"]
    # b first: it cannot reach a's files from its own folder, so it moves the chunks only.
    b = servers.start(options, KAKUMEI_HOME=str(homes[1]))
    assert len(files_under(homes[0])) == 3
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT count(*) AS n FROM image_blobs") == 0
        assert tx.scalar("SELECT count(*) AS n FROM images WHERE path LIKE 's3:%'") == 2
    # a's start moves its files; then a goes, and its folder with it.
    a = servers.start(options, KAKUMEI_HOME=str(homes[0]))
    assert files_under(homes[0]) == []
    servers.close()
    homes[0].rename(homes[0].with_name("a-gone"))
    b = servers.start(options, KAKUMEI_HOME=str(homes[1]))
    assert a != b
    with db.transaction(write=False) as tx:
        rows = {r["id"]: r["path"] for r in tx.all("SELECT id, path FROM images")}
    assert set(rows) == set(made) and all(path.startswith("s3:") for path in rows.values())
    assert s3_place.keys() == sorted(path.removeprefix("s3:") for path in rows.values())
    with httpx.Client(base_url=b, headers={"Authorization": f"Bearer {key}"}, timeout=60) as on_b:
        for image_id, png in made.items():
            served = on_b.get(f"/api/v1/images/{image_id}")
            assert served.status_code == 200 and served.content == png
