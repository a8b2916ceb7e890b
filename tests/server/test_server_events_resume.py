"""Resuming a job's event stream with Last-Event-ID, over real HTTP against real `kakumei serve`
processes: two sharing one PostgreSQL database (one on SQLite), a worker driven by hand
through the worker API. A resume replays every event missed, once, in order, then ends; a
resume after the last event of a finished job ends at once (204: an EventSource stops
reconnecting) instead of waiting for events that will never come.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from kakumei.store.db import Database
from kakumei.store.users import UserStore
from kakumei.store.workers import WorkerStore
from tests.support import listening_socket, sse_events, start_serve, stop, url_of

JOB = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3}
# A hang is a failure, not a test that never ends.
TIMEOUT = httpx.Timeout(30, read=8)


@pytest.fixture
def servers(database_url: str, kakumei_home: Path, tmp_path: Path) -> Iterator[list[str]]:
    """Two servers on PostgreSQL, one on SQLite (then listed twice); no local worker."""
    env = {**os.environ, "KAKUMEI_HOME": str(kakumei_home), "KAKUMEI_DEVICE": "cpu",
           "KAKUMEI_KEY_RATE_PER_MINUTE": "0", "KAKUMEI_IP_RATE_PER_MINUTE": "0"}
    count = 2 if database_url.startswith("postgresql") else 1
    procs, socks = [], []
    try:
        for n in range(count):
            sock: socket.socket = listening_socket()
            socks.append(sock)
            procs.append(start_serve(sock, ["--database", database_url, "--model", "kakumei:tiny", "--no-local-worker"],
                                     env, tmp_path / f"serve-{n}.log"))
        urls = [url_of(s) for s in socks]
        yield urls if count == 2 else urls * 2
    finally:
        for proc in procs:
            stop(proc)
        for sock in socks:
            sock.close()


def noise_png() -> str:
    """A 64x64 PNG of noise (the server refuses a flat one as not a generated picture)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def events(client: httpx.Client, url: str, last_event_id: int | None = None, until: int | None = None) -> tuple[int, list[tuple[int, str]]]:
    """(status, [(id, kind)]) of a stream read to its end, or until `until` events."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    seen: list[tuple[int, str]] = []
    with client.stream("GET", url, headers=headers) as reply:
        if reply.status_code != 200:
            return reply.status_code, seen
        for event_id, kind in sse_events(reply.iter_lines()):
            if event_id is not None:
                seen.append((event_id, kind))
                if until is not None and len(seen) >= until:
                    break
    return 200, seen


def user_and_worker(database_url: str, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The auth headers of a new user `name` and of a worker key (of another user) driven by hand."""
    db = Database(database_url)
    try:
        user = UserStore(db).add(name)[1]
        worker = WorkerStore(db).add(UserStore(db).add(f"owner-of-{name}")[0].id, "by-hand")[1]
    finally:
        db.close()
    return {"Authorization": f"Bearer {user}"}, {"Authorization": f"Bearer {worker}"}


def test_a_resume_replays_what_was_missed_and_ends_on_any_server(servers: list[str], database_url: str) -> None:
    a, b = servers
    me, w = user_and_worker(database_url, "carol")
    with httpx.Client(timeout=TIMEOUT, headers=me) as client:
        job = client.post(f"{a}/api/v1/jobs", json=JOB)
        assert job.status_code == 201, job.text
        stream = a + job.json()["events_url"]
        status, first = events(client, stream, until=1)
        assert status == 200 and [k for _, k in first] == ["queued"]

        # the client is away while the job runs to its end (driven through the other server)
        lease = client.post(f"{b}/api/v1/worker/claim", json={}, headers=w).json()
        beat = f"{b}/api/v1/worker/jobs/{lease['job_id']}/heartbeat"
        for step in (1, 2, 3):
            assert client.post(beat, json={"lease_id": lease["lease_id"], "step": step, "total": 3}, headers=w).status_code == 200
        done = client.post(f"{b}/api/v1/worker/jobs/{lease['job_id']}/complete",
                           json={"lease_id": lease["lease_id"], "seed": 1, "images": [{"png_base64": noise_png(), "seed": 1, "index": 0}]}, headers=w)
        assert done.status_code == 200, done.text

        # resumed on the other server: the rest, once, in order, and the stream ends
        resume = b + job.json()["events_url"]
        status, rest = events(client, resume, first[-1][0])
        assert status == 200
        assert [k for _, k in rest] == ["started", "progress", "progress", "progress", "succeeded"]
        ids = [i for i, _ in first + rest]
        assert ids == sorted(set(ids))

        # resumed from the middle, on the first server: the same tail
        assert events(client, stream, rest[1][0]) == (200, rest[2:])
        # resumed after the last event, on either server: nothing is left, so it ends now
        for url in (stream, resume):
            assert events(client, url, rest[-1][0]) == (204, [])
        # no Last-Event-ID: the whole story again
        assert events(client, resume) == (200, first + rest)


def test_a_queued_stream_hears_its_position_move_when_the_job_ahead_is_taken(servers: list[str], database_url: str) -> None:
    a, b = servers
    me, w = user_and_worker(database_url, "dave")
    with httpx.Client(timeout=TIMEOUT, headers=me) as client:
        first, second = (client.post(f"{a}/api/v1/jobs", json=JOB).json() for _ in range(2))
        with client.stream("GET", a + second["events_url"]) as reply:
            lines = reply.iter_lines()
            positions = []
            for line in lines:
                if line.startswith("data: "):
                    positions.append(json.loads(line[6:]).get("queue_position"))
                    if len(positions) == 1:
                        # the job ahead is taken through the other server
                        lease = client.post(f"{b}/api/v1/worker/claim", json={}, headers=w).json()
                        assert lease["job_id"] == first["id"]
                        beat = {"lease_id": lease["lease_id"], "step": 1, "total": 3}
                        assert client.post(f"{b}/api/v1/worker/jobs/{first['id']}/heartbeat", json=beat, headers=w).status_code == 200
                    else:
                        break
    assert positions == [1, 0]
