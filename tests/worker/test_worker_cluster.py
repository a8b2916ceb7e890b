"""Scale-out with real processes over loopback HTTP: `kakumei serve` processes sharing one
PostgreSQL database, `kakumei worker` processes attached to either of them.

Every job completes exactly once; a worker killed with SIGKILL mid-job loses its job to the
other worker; a worker that returns wrong pictures is caught by a re-run on a trusted worker
(a server's local worker), quarantined, and paid nothing for them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from kakumei.store.db import Database
from kakumei.store.images import blob_at
from kakumei.store.ledger import Ledger
from kakumei.store.migrate import migrate
from kakumei.store.users import UserStore
from kakumei.store.workers import WorkerStatus, WorkerStore
from tests.support import listening_socket, log_text, spawn, start_serve, stop, url_of, wait_for

HERE = Path(__file__).parent
JOB = {"prompt": "a boat", "width": 64, "height": 64, "steps": 2}
# Servers accept the test's bursts; a short lease so a killed worker's job comes back soon.
SERVER_ENV = {
    "KAKUMEI_DEVICE": "cpu",
    "KAKUMEI_LEASE_SECONDS": "3",
    "KAKUMEI_VERIFY_SAMPLE_RATE": "1.0",
    "KAKUMEI_VERIFY_QUARANTINE_AFTER": "2",
    "KAKUMEI_MAX_QUEUED_JOBS": "1000",
    "KAKUMEI_ANONYMOUS_MAX_QUEUED": "1000",
    "KAKUMEI_FREE_QUEUED_PER_IP": "1000",
    "KAKUMEI_IP_RATE_PER_MINUTE": "100000",
    "KAKUMEI_IP_BURST": "1000",
    "KAKUMEI_KEY_RATE_PER_MINUTE": "100000",
    "KAKUMEI_KEY_BURST": "1000",
    "KAKUMEI_FREE_BUSY_QUEUE": "1000",
}
TERMINAL = ("succeeded", "failed", "cancelled")


class Cluster:
    def __init__(self, database_url: str, home: Path, logs: Path) -> None:
        self.database_url = database_url
        self.home = home
        self.logs = logs
        self.procs: list[subprocess.Popen] = []
        self.sockets: list[socket.socket] = []
        self.db = Database(database_url)
        migrate(self.db)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **SERVER_ENV, "KAKUMEI_HOME": str(self.home), "KAKUMEI_MODEL": "kakumei:tiny", **extra}

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = spawn(args, env, self.logs / f"{name}.log")
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return log_text(self.logs / f"{name}.log")

    def server(self, name: str, *, local_worker: bool = False) -> str:
        sock = listening_socket()
        self.sockets.append(sock)
        options = ["--database", self.database_url]
        if not local_worker:
            options.append("--no-local-worker")
        self.procs.append(start_serve(sock, options, self.env(), self.logs / f"{name}.log"))
        return url_of(sock)

    def worker_key(self, owner: str, name: str) -> str:
        users = UserStore(self.db)
        user = users.by_name(owner) or users.add(owner)[0]
        return WorkerStore(self.db).add(user.id, name)[1]

    def worker(self, name: str, url: str, key: str, script: Path | None = None) -> subprocess.Popen:
        env = self.env(KAKUMEI_WORKER_KEY=key)
        if script is None:
            args = [sys.executable, "-m", "kakumei.cli", "worker", "--server", url, "--model", "kakumei:tiny"]
        else:
            args = [sys.executable, str(script), url]
        proc = self._spawn(name, args, env)
        record = WorkerStore(self.db).by_name(name)
        assert record is not None

        def claiming() -> bool:  # it has asked for work: engine loaded, loop running
            assert proc.poll() is None, self.log(name)
            return WorkerStore(self.db).get(record.id).last_seen_at is not None

        wait_for(claiming, f"worker {name}")
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        stop(proc, signal.SIGINT, timeout=60)

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for sock in self.sockets:
            sock.close()
        self.db.close()

    def rows(self, sql: str, params: tuple = ()) -> list[dict]:
        with self.db.transaction(write=False) as tx:
            return tx.all(sql, params)


@pytest.fixture
def cluster(postgres_database: str, kakumei_home: Path, tmp_path: Path) -> Iterator[Cluster]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    cluster = Cluster(f"{postgres_database}?options=-csearch_path%3D{schema}", kakumei_home, tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def submit(url: str, job: dict) -> str:
    reply = httpx.post(f"{url}/api/v1/jobs", json=job, timeout=30)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def finished(urls: list[str], job_ids: list[str], seconds: float = 180) -> dict[str, dict]:
    """Each job's final state, read from alternating servers."""
    jobs: dict[str, dict] = {}
    for n, job_id in enumerate(job_ids):
        url = urls[n % len(urls)]

        def done() -> dict | None:
            job = httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=30).json()
            return job if job["state"] in TERMINAL else None

        jobs[job_id] = wait_for(done, f"job {job_id}", seconds)  # type: ignore[assignment]
    return jobs


def leased_by(cluster: Cluster, job_id: str) -> list[str]:
    rows = cluster.rows("SELECT data FROM job_events WHERE job_id = ? AND kind = 'leased' ORDER BY id", (job_id,))
    import json

    return [json.loads(r["data"])["worker"] for r in rows]


def test_two_servers_two_workers_fifty_jobs_each_exactly_once(cluster: Cluster) -> None:
    urls = [cluster.server("server-a"), cluster.server("server-b")]
    cluster.worker("w1", urls[0], cluster.worker_key("alice", "w1"))
    cluster.worker("w2", urls[1], cluster.worker_key("bob", "w2"))
    job_ids = [submit(urls[n % 2], {**JOB, "seed": n}) for n in range(50)]
    jobs = finished(urls, job_ids)

    assert Counter(j["state"] for j in jobs.values()) == Counter({"succeeded": 50})
    succeeded = Counter(r["job_id"] for r in cluster.rows("SELECT job_id FROM job_events WHERE kind = 'succeeded'"))
    images = Counter(r["job_id"] for r in cluster.rows("SELECT job_id FROM images"))
    assert succeeded == Counter({j: 1 for j in job_ids})
    assert images == Counter({j: 1 for j in job_ids})
    by_worker = Counter(leased_by(cluster, j)[-1] for j in job_ids)
    records = {w.lease_owner: w for w in WorkerStore(cluster.db).list()}
    assert set(by_worker) == set(records) and sum(by_worker.values()) == 50  # both worked
    assert {records[o].name: records[o].jobs_done for o in by_worker} == {records[o].name: n for o, n in by_worker.items()}


def test_a_worker_killed_mid_job_loses_it_to_the_other(cluster: Cluster) -> None:
    urls = [cluster.server("server-a"), cluster.server("server-b")]
    w1 = cluster.worker("w1", urls[0], cluster.worker_key("alice", "w1"))
    slow = submit(urls[1], {**JOB, "steps": 40, "n_iter": 2, "seed": 5})

    def running() -> bool:
        job = httpx.get(f"{urls[1]}/api/v1/jobs/{slow}", timeout=30).json()
        return (job.get("progress") or {}).get("step") is not None

    wait_for(running, "the slow job to run on w1")
    os.kill(w1.pid, signal.SIGKILL)
    w1.wait()
    cluster.worker("w2", urls[1], cluster.worker_key("bob", "w2"))
    job = finished(urls, [slow])[slow]

    assert job["state"] == "succeeded" and job["attempts"] == 1 and len(job["images"]) == 2
    w1_owner, w2_owner = (WorkerStore(cluster.db).by_name(n).lease_owner for n in ("w1", "w2"))
    assert leased_by(cluster, slow) == [w1_owner, w2_owner]
    assert len(cluster.rows("SELECT id FROM images WHERE job_id = ?", (slow,))) == 2


def test_a_cheating_worker_is_caught_quarantined_and_unpaid(cluster: Cluster) -> None:
    url = cluster.server("server-a")
    cheat = cluster.worker("cheat", url, cluster.worker_key("mallory", "cheat"), script=HERE / "cheating_worker.py")
    job_ids = [submit(url, {**JOB, "seed": 100 + n}) for n in range(3)]
    assert {j["state"] for j in finished([url], job_ids).values()} == {"succeeded"}
    before = {r["id"]: blob_at(cluster.db, r["path"]).read_bytes() for r in cluster.rows("SELECT id, path FROM images")}

    # A server with a local worker joins: its trusted worker re-runs the pending checks.
    cluster.server("verifier", local_worker=True)
    wait_for(lambda: cheat.poll() is not None, "the cheating worker to be refused")
    assert cheat.returncode == 3 and "quarantined" in cluster.log("cheat")

    record = WorkerStore(cluster.db).by_name("cheat")
    assert record.status == WorkerStatus.QUARANTINED and record.mismatches >= 2
    owner = UserStore(cluster.db).by_name("mallory")
    assert Ledger(cluster.db).balance(owner.id) == 0
    # The users got the pictures they asked for: the verifier's images replaced the wrong ones.
    wait_for(lambda: WorkerStore(cluster.db).verification_counts(record.id).get("failed") == 3, "all three checks")
    after = {r["id"]: blob_at(cluster.db, r["path"]).read_bytes() for r in cluster.rows("SELECT id, path FROM images")}
    assert set(after) == set(before) and all(after[i] != before[i] for i in before)
