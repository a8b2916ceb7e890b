"""Kill `kakumei serve` with SIGKILL mid-job and restart it: nothing lost, nothing twice.

Real processes on both databases: the server runs as a subprocess with its local worker and
the tiny model.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

from kakumei.store.db import Database
from tests.support import listening_socket, start_serve, url_of

SLOW = {"prompt": "slow", "width": 64, "height": 64, "steps": 20, "n_iter": 2, "seed": 1}
SMALL = {"prompt": "small", "width": 64, "height": 64, "steps": 2, "batch_size": 2}


def start_server(database_url: str, home: Path, sock: socket.socket, log: Path) -> tuple[subprocess.Popen, str]:
    env = {
        **os.environ,
        "KAKUMEI_HOME": str(home),
        "KAKUMEI_DEVICE": "cpu",
        "KAKUMEI_LEASE_SECONDS": "30",
    }
    proc = start_serve(sock, ["--database", database_url, "--model", "kakumei:tiny"], env, log, seconds=60)
    return proc, url_of(sock)


def test_sigkill_loses_nothing_and_completes_nothing_twice(database_url, kakumei_home, tmp_path) -> None:
    # One socket for both servers: the restarted one answers at the same address.
    sock, log = listening_socket(), tmp_path / "server.log"
    proc, url = start_server(database_url, kakumei_home, sock, log)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            slow = client.post("/api/v1/jobs", json=SLOW).json()["id"]
            small = [client.post("/api/v1/jobs", json=SMALL).json()["id"] for _ in range(4)]
            deadline = time.monotonic() + 60
            while True:
                job = client.get(f"/api/v1/jobs/{slow}").json()
                assert job["state"] in ("queued", "leased", "running"), job
                if (job.get("progress") or {}).get("step") is not None:
                    break
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            states = {j: client.get(f"/api/v1/jobs/{j}").json()["state"] for j in small}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert set(states.values()) == {"queued"}, states  # queued behind the running one

        proc, url = start_server(database_url, kakumei_home, sock, log)
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 120
            jobs = {}
            for job_id in [slow, *small]:
                while True:
                    job = client.get(f"/api/v1/jobs/{job_id}").json()
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        break
                    assert time.monotonic() < deadline, (job, log.read_text())
                    time.sleep(0.05)
                jobs[job_id] = job
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        sock.close()

    assert {j: job["state"] for j, job in jobs.items()} == {j: "succeeded" for j in jobs}
    assert jobs[slow]["attempts"] == 1  # the run the kill interrupted counts as one attempt
    assert [len(jobs[j]["images"]) for j in [slow, *small]] == [2, 2, 2, 2, 2]
    db = Database(database_url)
    try:
        with db.transaction(write=False) as tx:
            finished = Counter(
                r["job_id"] for r in tx.all("SELECT job_id FROM job_events WHERE kind = 'succeeded'")
            )
            images = Counter(r["job_id"] for r in tx.all("SELECT job_id FROM images"))
    finally:
        db.close()
    assert finished == Counter({j: 1 for j in jobs})
    assert images == Counter({j: 2 for j in jobs})
