"""Three real `kakumei serve` processes on one PostgreSQL database, each with a data folder the
others cannot read: each runs in its own mount namespace (`unshare -m`) with an empty tmpfs
over the other servers' folders. Whatever a client asks, any server answers the same: images,
gallery, event streams (resumed on another server after one is killed), A1111 progress and
interrupt, and one key's burst holds across all three.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from kakumei.store.db import Database
from kakumei.store.migrate import migrate
from kakumei.store.users import UserStore
from kakumei.store.workers import WorkerStore
from tests.support import listening_socket, spawn, sse_events, stop, url_of, wait_for, wait_until_serving

JOB = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
BURST = 10
SERVER_ENV = {
    "KAKUMEI_DEVICE": "cpu",
    "KAKUMEI_MODEL": "kakumei:tiny",
    "HF_HUB_OFFLINE": "1",
    "KAKUMEI_MAX_QUEUED_JOBS": "1000",
    "KAKUMEI_ANONYMOUS_MAX_QUEUED": "1000",
    "KAKUMEI_FREE_QUEUED_PER_IP": "1000",
    "KAKUMEI_FREE_BUSY_QUEUE": "1000",
    "KAKUMEI_FREE_MAX_STEPS": "500",
    "KAKUMEI_FREE_MAX_IMAGES": "8",
    "KAKUMEI_IP_RATE_PER_MINUTE": "100000",
    "KAKUMEI_IP_BURST": "1000",
    # A key's burst, refilled slowly enough that a test's quick submits cannot refill it.
    "KAKUMEI_KEY_RATE_PER_MINUTE": "0.5",
    "KAKUMEI_KEY_BURST": str(BURST),
    "KAKUMEI_MAX_EVENT_STREAMS_PER_USER": "2",
}
NAMES = ("a", "b", "c")
pytestmark = pytest.mark.skipif(
    subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0,
    reason="needs mount namespaces (unshare -m, as root)",
)


class Cluster:
    """Servers named a, b, c with homes under `root`; `a` runs the local worker."""

    def __init__(self, database_url: str, models: Path, root: Path) -> None:
        self.database_url = database_url
        self.root = root
        self.db = Database(database_url)
        migrate(self.db)
        self.homes = {}
        for name in NAMES:
            home = root / f"home-{name}"
            home.mkdir()
            (home / "models").symlink_to(models)  # the tiny model, built once for the session
            self.homes[name] = home
        self.sockets = {name: listening_socket() for name in NAMES}
        self.procs: dict[str, subprocess.Popen] = {}
        self.others: list[subprocess.Popen] = []

    def url(self, name: str) -> str:
        return url_of(self.sockets[name])

    def start(self, name: str, **env: str) -> None:
        """Serve `name` in a mount namespace where the other servers' homes are empty."""
        sock = self.sockets[name]
        hidden = [self.homes[other] for other in NAMES if other != name]
        serve = [sys.executable, "-m", "kakumei.cli", "serve", "--fd", str(sock.fileno()), "--database", self.database_url]
        if name != "a":
            serve.append("--no-local-worker")
        mounts = " && ".join(f"mount -t tmpfs kakumei-hidden {shlex.quote(str(h))}" for h in hidden)
        args = ["unshare", "-m", "sh", "-c", f"{mounts} && exec {shlex.join(serve)}"]
        environ = {**os.environ, **SERVER_ENV, "KAKUMEI_HOME": str(self.homes[name]), **env}
        log = self.root / f"{name}.log"
        proc = spawn(args, environ, log, pass_fds=[sock.fileno()])
        self.procs[name] = proc
        wait_until_serving(proc, self.url(name), log)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in [*self.others, *self.procs.values()]:
            stop(proc, signal.SIGINT, timeout=60)
        for sock in self.sockets.values():
            sock.close()
        self.db.close()

    def user(self, name: str) -> dict[str, str]:
        """Headers of a new registered user."""
        _, key = UserStore(self.db).add(f"{name}-{uuid.uuid4().hex[:6]}")
        return {"Authorization": f"Bearer {key}"}

    def rows(self, sql: str, params: tuple = ()) -> list[dict]:
        with self.db.transaction(write=False) as tx:
            return tx.all(sql, params)


@pytest.fixture
def cluster(postgres_database: str, kakumei_home: Path, tmp_path: Path) -> Iterator[Cluster]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    cluster = Cluster(f"{postgres_database}?options=-csearch_path%3D{schema}", kakumei_home / "models", tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def submit(url: str, headers: dict[str, str], job: dict = JOB) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/jobs", json=job, headers=headers, timeout=30)


def done(url: str, headers: dict[str, str], job_id: str) -> dict:
    def finished() -> dict | None:
        job = httpx.get(f"{url}/api/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, f"job {job_id}", 180, interval=0.1)  # type: ignore[return-value]


def fetch(url: str, headers: dict[str, str], image_url: str) -> httpx.Response:
    return httpx.get(url + image_url, headers=headers, timeout=30)


def test_any_image_through_any_server_files_move_in_and_deleting_removes_the_bytes(cluster: Cluster) -> None:
    # a keeps images in its own folder first: b cannot read them (the folders really are apart)
    cluster.start("a", KAKUMEI_IMAGE_STORE="files")
    cluster.start("b")
    alice = cluster.user("alice")
    a, b = cluster.url("a"), cluster.url("b")
    first = done(a, alice, submit(a, alice).json()["id"])
    assert first["state"] == "succeeded", first
    old_url = first["images"][0]["url"]
    png = fetch(a, alice, old_url)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert fetch(b, alice, old_url).status_code == 404

    # restarted with the default (the database), a moves its files in at start
    stop(cluster.procs.pop("a"), signal.SIGINT, timeout=60)
    cluster.start("a")
    cluster.start("c")
    c = cluster.url("c")
    for url in (a, b, c):
        again = fetch(url, alice, old_url)
        assert again.status_code == 200 and again.content == png.content, url
    assert not any((cluster.homes["a"] / "images").rglob("*.png"))  # moved, not copied

    # made through b (run by a's worker), read through every server, gallery the same
    second = done(c, alice, submit(b, alice, {**JOB, "seed": 7}).json()["id"])
    new_url = second["images"][0]["url"]
    bodies = {fetch(url, alice, new_url).content for url in (a, b, c)}
    assert len(bodies) == 1 and next(iter(bodies)).startswith(b"\x89PNG")
    galleries = [httpx.get(f"{url}/api/v1/images", headers=alice, timeout=30).json() for url in (a, b, c)]
    assert galleries[0] == galleries[1] == galleries[2] and len(galleries[0]["images"]) == 2

    # deleted through c: gone everywhere, bytes included
    image_id = second["images"][0]["id"]
    key = cluster.rows("SELECT path FROM images WHERE id = ?", (image_id,))[0]["path"].removeprefix("db:")
    assert httpx.delete(f"{c}/api/v1/images/{image_id}", headers=alice, timeout=30).status_code == 204
    assert all(fetch(url, alice, new_url).status_code == 404 for url in (a, b, c))
    assert cluster.rows("SELECT seq FROM image_blobs WHERE blob_key = ?", (key,)) == []


def test_one_keys_burst_and_stream_places_hold_across_servers(cluster: Cluster) -> None:
    for name in NAMES:
        cluster.start(name, KAKUMEI_LOCAL_WORKER="false")
    urls = [cluster.url(n) for n in NAMES]
    bob = cluster.user("bob")
    codes = [submit(urls[n % 3], bob, {**JOB, "seed": n}).status_code for n in range(16)]
    assert codes.count(201) == BURST and codes.count(429) == 16 - BURST, codes

    # two open streams (the limit) on a and b: a third on c is refused
    job_id = cluster.rows("SELECT id FROM jobs ORDER BY seq LIMIT 1")[0]["id"]
    with httpx.Client(timeout=30, headers=bob) as client:
        with client.stream("GET", f"{urls[0]}/api/v1/jobs/{job_id}/events"), \
                client.stream("GET", f"{urls[1]}/api/v1/jobs/{job_id}/events"):
            assert client.get(f"{urls[2]}/api/v1/jobs/{job_id}/events").status_code == 429
        # closed: a place is free again on any server, once its server has seen the close
        def reopened() -> bool:
            with client.stream("GET", f"{urls[2]}/api/v1/jobs/{job_id}/events") as reply:
                return reply.status_code == 200

        wait_for(reopened, "a closed stream to give its place back", 10, interval=0.1)


def read_events(lines: Iterator[str], until_kinds: set[str], seen: list[tuple[int, str]]) -> None:
    """Append (id, kind) of events read until one of `until_kinds` (or the stream ends)."""
    for event_id, kind in sse_events(lines):
        if event_id is not None:
            seen.append((event_id, kind))
        if kind in until_kinds:
            return


def test_events_progress_and_interrupt_through_any_server_and_a_killed_one(cluster: Cluster) -> None:
    for name in NAMES:
        cluster.start(name)
    # a remote worker attached to c, besides a's local worker
    owner = UserStore(cluster.db).add("owner")[0]
    key = WorkerStore(cluster.db).add(owner.id, "w-c")[1]
    env = {**os.environ, **SERVER_ENV, "KAKUMEI_HOME": str(cluster.homes["c"]), "KAKUMEI_WORKER_KEY": key}
    cluster.others.append(spawn(
        [sys.executable, "-m", "kakumei.cli", "worker", "--server", cluster.url("c"), "--model", "kakumei:tiny"],
        env, cluster.root / "worker.log"))
    a, b, c = (cluster.url(n) for n in NAMES)
    carol = cluster.user("carol")
    job_id = submit(a, carol, {**JOB, "steps": 12, "seed": 3}).json()["id"]

    # the stream starts on b; b is killed mid-job; the client resumes on c with Last-Event-ID
    seen: list[tuple[int, str]] = []
    with httpx.Client(timeout=60, headers=carol) as client:
        with client.stream("GET", f"{b}/api/v1/jobs/{job_id}/events") as reply:
            read_events(reply.iter_lines(), {"progress"}, seen)
            cluster.kill("b")
        last = seen[-1][0]
        with client.stream("GET", f"{c}/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(last)}) as reply:
            read_events(reply.iter_lines(), {"succeeded", "failed", "cancelled"}, seen)
    public = cluster.rows(
        "SELECT id, kind FROM job_events WHERE job_id = ? AND kind <> 'leased' ORDER BY id", (job_id,))
    assert seen == [(r["id"], r["kind"]) for r in public]  # every event, once, in order
    assert seen[-1][1] == "succeeded"

    # A1111: the caller's running job, the same through a and c; interrupted through a
    queued = submit(c, carol, {**JOB, "steps": 150, "n_iter": 4, "seed": 4})
    assert queued.status_code == 201, queued.text
    slow = queued.json()["id"]

    def running() -> dict | None:
        reply = httpx.get(f"{c}/sdapi/v1/progress", params={"skip_current_image": "true"}, headers=carol, timeout=30).json()
        return reply if reply["progress"] > 0 else None

    wait_for(running, "progress through c", 120, interval=0.1)
    through_a = httpx.get(f"{a}/sdapi/v1/progress", params={"skip_current_image": "true"}, headers=carol, timeout=30).json()
    assert through_a["progress"] > 0 and through_a["state"]["job_count"] == 1
    assert httpx.post(f"{a}/sdapi/v1/interrupt", headers=carol, timeout=30).status_code == 200
    assert done(c, carol, slow)["state"] == "cancelled"
    options = {"sd_model_checkpoint": "kakumei:tiny"}
    assert httpx.post(f"{a}/sdapi/v1/options", json=options, headers=carol, timeout=30).status_code == 200
    assert httpx.get(f"{c}/sdapi/v1/options", headers=carol, timeout=30).json()["sd_model_checkpoint"] == "kakumei:tiny"

    # an A1111 txt2img through c answers with the image every server serves
    reply = httpx.post(f"{c}/sdapi/v1/txt2img", json={**JOB, "seed": 9}, headers=carol, timeout=120)
    assert reply.status_code == 200, reply.text
    png = base64.b64decode(reply.json()["images"][0])
    info = json.loads(reply.json()["info"])
    assert png.startswith(b"\x89PNG") and info["seed"] == 9
    gallery = httpx.get(f"{a}/api/v1/images", headers=carol, timeout=30).json()["images"]
    assert fetch(a, carol, gallery[0]["url"]).content == png
