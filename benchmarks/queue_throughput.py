"""Queue throughput and claim latency with a no-op engine on PostgreSQL, with 1, 16 and 64
concurrent workers, through the store alone and through HTTP.

    python benchmarks/queue_throughput.py [--postgres URL] [--workers 1,16,64] [--seconds S]
        [--modes store,http1,http2] [--no-image] [--scaling]

Each worker repeats submit -> claim -> heartbeat -> complete (one 64x64 PNG, kept where the
server keeps images: in the database on PostgreSQL; --no-image completes with none):

- store: JobStore calls from threads, one connection each (what a server's threads do);
- http1 / http2: real `kakumei serve` processes (one, or two sharing the database), workers
  as threads each with its own HTTP client: native API submit (a registered user's key), then
  the worker API's claim, heartbeat and complete, alternating between the servers.

Prints jobs/s and the claim's p50 and p99 (ms) per mode and worker count, and under each row
every step's p50/p99 (submit, claim, heartbeat, complete) and how many claims found no job
(a claim answered "nothing" while work is queued shows there, not as a slow claim). --scaling prints the
older table instead: one worker's jobs/s on SQLite and PostgreSQL and the claim's latency with
a small and a large queue. The PostgreSQL URL names a maintenance database; the benchmark
creates and drops its own.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
from PIL import Image

from kakumei.fairness.cost import request_cost
from kakumei.protocol import Capabilities
from kakumei.schemas import GenerationRequest
from kakumei.server.job_source import StoreJobSource
from kakumei.store.db import Database
from kakumei.store.images import ImageResult, ImageStore
from kakumei.store.jobs import (
    SELECT_GROUP_NEXT_USER,
    SELECT_NEXT_GROUP,
    SELECT_USER_NEXT_JOB,
    JobStore,
    NewJob,
    _with_caps,
)
from kakumei.store.migrate import migrate
from kakumei.store.users import UserStore
from kakumei.store.workers import WorkerStore
from kakumei.worker import Worker

sys.path.append(str(Path(__file__).resolve().parent))
from _claims import claim_times  # noqa: E402

REQUEST = GenerationRequest(prompt="bench", width=64, height=64, steps=2)
COST = request_cost(REQUEST, "m")


class NoopEngine:
    """Generates nothing, instantly: what is left is the queue's own cost."""

    def generate(self, request: Any, on_step: Any = None, cancelled: Any = None) -> Any:
        return SimpleNamespace(images=[], seed=0)


def open_stores(url: str, images: Path) -> tuple[Database, UserStore, JobStore]:
    db = Database(url)
    migrate(db)
    return db, UserStore(db), JobStore(db, ImageStore(db, images))


def throughput(url: str, jobs: int, images: Path) -> float:
    db, users, store = open_stores(url, images)
    user_ids = [users.add(f"t{i}")[0].id for i in range(10)]
    worker = Worker(StoreJobSource(store, store.images), NoopEngine(), "bench")
    stop = threading.Event()
    start = time.perf_counter()
    for i in range(jobs):
        store.submit(NewJob(user_ids[i % 10], REQUEST, "m", COST))
        assert worker.run_one(stop)
    elapsed = time.perf_counter() - start
    db.close()
    return jobs / elapsed


def choice_ms(db: Database) -> float:
    """Median time of the fair choice alone (the three reads, no commit), in ms."""
    group_sql, params = _with_caps(SELECT_NEXT_GROUP, Capabilities())
    user_sql, user_params = _with_caps(SELECT_GROUP_NEXT_USER, Capabilities())
    job_sql, job_params = _with_caps(SELECT_USER_NEXT_JOB, Capabilities())
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        with db.transaction(write=False) as tx:
            group = tx.one(group_sql.replace("{lock_group_skip}", ""), params)
            assert group is not None
            user = tx.one(user_sql, [group["id"], *user_params])
            assert user is not None
            tx.one(job_sql.replace("{skip_locked}", ""), [user["id"], *job_params])
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def claim_latency(
    url: str, queued: int, users_n: int, samples: int, images: Path
) -> tuple[float, float, float, float]:
    """(seconds to seed, median claim ms, p95 claim ms, choice ms) with `queued` jobs waiting."""
    db, users, store = open_stores(url, images)
    ids = [users.add(f"u{i}")[0].id for i in range(users_n)]
    start = time.perf_counter()
    for chunk in range(0, queued, 10_000):
        n = min(10_000, queued - chunk)
        store.submit_many([NewJob(ids[(chunk + i) % users_n], REQUEST, "m", COST) for i in range(n)])
    seeded = time.perf_counter() - start
    with db.transaction() as tx:
        tx.execute("ANALYZE")
    choice = choice_ms(db)
    times = claim_times(store, samples)
    db.close()
    return seeded, statistics.median(times) * 1000, times[int(len(times) * 0.95)] * 1000, choice




def tiny_png() -> bytes:
    """A 64x64 PNG of noise: the server refuses a flat one as not a generated picture."""
    out = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(out, format="PNG")
    return out.getvalue()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


PHASES = ("submit", "claim", "heartbeat", "complete")


def new_phases() -> dict[str, list[float]]:
    return {phase: [] for phase in PHASES}


def merge_phases(into: dict[str, list[float]], more: dict[str, list[float]]) -> None:
    for phase, times in more.items():
        into[phase].extend(times)


def phase_line(phases: dict[str, list[float]]) -> str:
    """p50/p99 in ms of each step of a job, so the slow one shows."""
    parts = []
    for phase in PHASES:
        times = sorted(phases[phase])
        parts.append(f"{phase} {percentile(times, 0.5) * 1000:.1f}/{percentile(times, 0.99) * 1000:.1f}")
    empty = len(phases["claim"]) - len(phases["complete"])
    return "p50/p99 ms: " + ", ".join(parts) + f"; {empty} of {len(phases['claim'])} claims found no job"


def store_run(url: str, workers: int, seconds: float, png: bytes | None) -> tuple[float, list[float], dict[str, list[float]]]:
    """(jobs/s, sorted claim seconds, seconds per phase) of `workers` threads on the store for `seconds`."""
    db = Database(url)
    migrate(db)
    users = UserStore(db)
    user_ids = [users.add(f"s{workers}-{i}")[0].id for i in range(max(10, workers))]
    images = ImageStore(db, Path(tempfile.mkdtemp(prefix="kakumei-bench-")), "database")
    store = JobStore(db, images)
    claims: list[float] = []
    phases = new_phases()
    done = [0]
    lock = threading.Lock()
    deadline = [0.0]
    # The clock starts when every worker is ready (set before any of them is released).
    start = threading.Barrier(workers + 1, action=lambda: deadline.__setitem__(0, time.perf_counter() + seconds))

    def work(n: int) -> None:
        mine: list[float] = []
        own = new_phases()
        count = 0
        start.wait()
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            store.submit(NewJob(user_ids[n], REQUEST, "m", COST))
            t1 = time.perf_counter()
            lease = store.claim(f"w{n}")
            t2 = time.perf_counter()
            mine.append(t2 - t1)
            own["submit"].append(t1 - t0)
            own["claim"].append(t2 - t1)
            if lease is None:
                continue
            store.heartbeat(lease.job.id, lease.lease_id)
            t3 = time.perf_counter()
            pending = images.write_files(lease.job.id, [ImageResult(png=png, seed=0, index=0)]) if png else []
            store.complete(lease.job.id, lease.lease_id, pending, seed=0)
            own["heartbeat"].append(t3 - t2)
            own["complete"].append(time.perf_counter() - t3)
            count += 1
        with lock:
            claims.extend(mine)
            merge_phases(phases, own)
            done[0] += count

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    began = deadline[0] - seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    db.close()
    return done[0] / elapsed, sorted(claims), phases


SERVER_ENV = {
    "KAKUMEI_KEY_RATE_PER_MINUTE": "0",
    "KAKUMEI_IP_RATE_PER_MINUTE": "0",
    "KAKUMEI_MAX_QUEUED_JOBS": "1000000",
    "KAKUMEI_ANONYMOUS_MAX_QUEUED": "1000000",
    "KAKUMEI_FREE_QUEUED_PER_IP": "1000000",
    "KAKUMEI_FREE_BUSY_QUEUE": "1000000",
    "KAKUMEI_FREE_USERS_PER_IP": "1000000",
    "KAKUMEI_DEVICE": "cpu",
    "KAKUMEI_MODEL": "kakumei:tiny",
}


def start_servers(url: str, count: int, home: Path) -> tuple[list[str], list[subprocess.Popen], list[socket.socket]]:
    urls, procs, socks = [], [], []
    home.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        env = {**os.environ, **SERVER_ENV, "KAKUMEI_HOME": str(home / f"server-{n}")}
        args = [sys.executable, "-m", "kakumei.cli", "serve", "--fd", str(sock.fileno()), "--database", url, "--no-local-worker"]
        log = (home / f"server-{n}.log").open("ab")
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=[sock.fileno()]))
        socks.append(sock)
        urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
    for server in urls:
        for _ in range(600):
            try:
                if httpx.get(f"{server}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit(f"kakumei serve did not start: see {home}")
    return urls, procs, socks


def http_run(
    url: str, servers: int, workers: int, seconds: float, png: bytes | None, home: Path
) -> tuple[float, list[float], dict[str, list[float]]]:
    """(jobs/s, sorted claim seconds, seconds per phase) of `workers` HTTP workers against `servers` servers."""
    db = Database(url)
    migrate(db)
    users, worker_store = UserStore(db), WorkerStore(db)
    owner = users.add(f"owner-{servers}-{workers}")[0]
    user_keys = [users.add(f"h{servers}-{workers}-{i}")[1] for i in range(workers)]
    worker_keys = [worker_store.add(owner.id, f"w{servers}-{workers}-{i}")[1] for i in range(workers)]
    db.close()
    urls, procs, socks = start_servers(url, servers, home / f"http-{servers}-{workers}")
    request = REQUEST.model_dump(exclude={"init_images", "mask"}, exclude_none=True)
    images = [{"png_base64": base64.b64encode(png).decode(), "seed": 0, "index": 0}] if png else []
    claims: list[float] = []
    done = [0]
    lock = threading.Lock()
    deadline = [0.0]
    # The clock starts when every worker is ready (set before any of them is released).
    start = threading.Barrier(workers + 1, action=lambda: deadline.__setitem__(0, time.perf_counter() + seconds))

    phases = new_phases()

    def cycle(client: httpx.Client, user: dict, worker: dict, own: dict[str, list[float]]) -> tuple[float, bool]:
        """One job through the server: (claim seconds, whether a job was completed)."""
        t0 = time.perf_counter()
        reply = client.post("/api/v1/jobs", json=request, headers=user)
        assert reply.status_code == 201, reply.text
        t1 = time.perf_counter()
        reply = client.post("/api/v1/worker/claim", json={}, headers=worker)
        t2 = time.perf_counter()
        own["submit"].append(t1 - t0)
        own["claim"].append(t2 - t1)
        if reply.status_code == 204:
            return t2 - t1, False
        assert reply.status_code == 200, reply.text
        lease = reply.json()
        job_id, lease_id = lease["job_id"], lease["lease_id"]
        reply = client.post(f"/api/v1/worker/jobs/{job_id}/heartbeat", json={"lease_id": lease_id}, headers=worker)
        assert reply.status_code == 200, reply.text
        t3 = time.perf_counter()
        body = {"lease_id": lease_id, "seed": 0, "images": images}
        reply = client.post(f"/api/v1/worker/jobs/{job_id}/complete", json=body, headers=worker)
        assert reply.status_code == 200, reply.text
        own["heartbeat"].append(t3 - t2)
        own["complete"].append(time.perf_counter() - t3)
        return t2 - t1, True

    def work(n: int) -> None:
        mine: list[float] = []
        own = new_phases()
        count = 0
        with httpx.Client(base_url=urls[n % len(urls)], timeout=60) as client:
            user = {"Authorization": f"Bearer {user_keys[n]}"}
            worker = {"Authorization": f"Bearer {worker_keys[n]}"}
            try:
                cycle(client, user, worker, new_phases())  # not timed: connections and the server's caches warm
            finally:
                start.wait()  # a worker that failed still lets the others start
            while time.perf_counter() < deadline[0]:
                took, completed = cycle(client, user, worker, own)
                mine.append(took)
                count += completed
        with lock:
            claims.extend(mine)
            merge_phases(phases, own)
            done[0] += count

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    try:
        for t in threads:
            t.start()
        start.wait()
        began = deadline[0] - seconds
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        for sock in socks:
            sock.close()
    return done[0] / elapsed, sorted(claims), phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", default="1,16,64", help="comma-separated worker counts")
    parser.add_argument("--modes", default="store,http1,http2", help="store, http1 (one server), http2 (two)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per row")
    parser.add_argument("--no-image", action="store_true", help="complete jobs with no image")
    parser.add_argument("--scaling", action="store_true", help="print the older single-worker table instead")
    parser.add_argument("--jobs", type=int, default=500, help="--scaling: jobs per database")
    parser.add_argument("--queued", type=int, default=100_000, help="--scaling: jobs in the large queue")
    parser.add_argument("--users", type=int, default=1_000, help="--scaling: their users")
    parser.add_argument("--samples", type=int, default=200, help="--scaling: claims timed")
    args = parser.parse_args()
    if args.scaling:
        scaling(args)
        return

    png = None if args.no_image else tiny_png()
    name = f"kakumei_bench_{uuid.uuid4().hex[:8]}"
    base = args.postgres.rsplit("/", 1)[0]
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    home = Path(tempfile.mkdtemp(prefix="kakumei-bench-"))
    rows = []
    try:
        for mode in args.modes.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                schema = f"{mode}_{workers}"
                with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA {schema}")
                url = f"{base}/{name}?options=-csearch_path%3D{schema}"
                if mode == "store":
                    rate, claims, phases = store_run(url, workers, args.seconds, png)
                else:
                    rate, claims, phases = http_run(url, int(mode.removeprefix("http")), workers, args.seconds, png, home)
                row = (mode, workers, rate, percentile(claims, 0.5) * 1000, percentile(claims, 0.99) * 1000)
                print(f"{row[0]:<6} {row[1]:>3} workers: {row[2]:8.1f} jobs/s, claim p50 {row[3]:6.2f} ms, p99 {row[4]:7.2f} ms", flush=True)
                print(f"       {phase_line(phases)}", flush=True)
                rows.append(row)
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print()
    print("submit -> claim -> heartbeat -> complete, no-op engine, PostgreSQL, "
          f"{'no image' if png is None else 'one 64x64 PNG per job'}, {args.seconds:g} s per row")
    print(f"{'mode':<6} {'workers':>7} {'jobs/s':>9} {'claim p50 ms':>13} {'p99 ms':>8}")
    for mode, workers, rate, p50, p99 in rows:
        print(f"{mode:<6} {workers:>7} {rate:>9.1f} {p50:>13.2f} {p99:>8.2f}")

def scaling(args: argparse.Namespace) -> None:
    """The old table: one worker's jobs/s on both databases, and claim latency against the
    queue's size."""
    name = f"kakumei_bench_{uuid.uuid4().hex[:8]}"
    base = args.postgres.rsplit("/", 1)[0]
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    tmp = Path(tempfile.mkdtemp(prefix="kakumei-bench-"))
    try:
        rows = []
        for label, make_url in (
            ("sqlite", lambda tag: f"sqlite:///{tmp / tag}.db"),
            ("postgresql", lambda tag: f"{base}/{name}?options=-csearch_path%3D{tag}"),
        ):
            if label == "postgresql":
                with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
                    for tag in ("tput", "small", "big"):
                        conn.execute(f"CREATE SCHEMA {tag}")
            rate = throughput(make_url("tput"), args.jobs, tmp / "images")
            small = claim_latency(make_url("small"), 1_000, 10, args.samples, tmp / "images")
            big = claim_latency(make_url("big"), args.queued, args.users, args.samples, tmp / "images")
            rows.append((label, rate, small, big))
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"jobs through submit -> claim -> no-op run -> complete: {args.jobs} per database")
    print(f"claim latency: 1,000 jobs from 10 users vs {args.queued:,} jobs from {args.users:,} users")
    print()
    big_label = format(args.queued, ",")
    print(f"{'':<11} {'':>8} {'claim (commit incl.), ms':^42} {'fair choice only, ms':^26}")
    print(f"{'database':<11} {'jobs/s':>8} {'1k med':>8} {'p95':>6} {big_label + ' med':>13} {'p95':>6} {'ratio':>6}"
          f" {'1k':>6} {big_label:>9} {'ratio':>6}")
    for label, rate, small, big in rows:
        print(f"{label:<11} {rate:>8.1f} {small[1]:>8.2f} {small[2]:>6.2f} {big[1]:>13.2f} {big[2]:>6.2f} "
              f"{big[1] / small[1]:>6.2f} {small[3]:>6.3f} {big[3]:>9.3f} {big[3] / small[3]:>6.2f}")
    print()
    print("ratio: big queue / small queue (1.0 = the claim does not grow with the queue)")
    print("seeding the big queue took " + ", ".join(f"{r[0]} {r[3][0]:.0f}s" for r in rows))


if __name__ == "__main__":
    main()
