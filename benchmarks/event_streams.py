"""1,000 open event streams (SSE) on one `kakumei serve`: its CPU and memory while they idle and
while the jobs they watch progress, on PostgreSQL and SQLite.

    python benchmarks/event_streams.py [--postgres URL] [--streams 1000] [--idle 10] [--busy 10]
        [--workers 2] [--steps 5] [--backends postgresql,sqlite] [--no-streams]

The server runs without a local worker. The benchmark submits one job per stream (over HTTP,
from 10 users), opens one stream per job on raw asyncio sockets (a cheap client: the server is
what is measured), then:

- idle: nothing happens for --idle seconds (every job is queued, no worker);
- busy: --workers fake workers (threads, each its own HTTP client) claim jobs through the
  worker API and drive each through --steps progress heartbeats and a completion with one
  64x64 PNG, while the streams watch, for --busy seconds.

For each phase it prints the server process's CPU seconds per second (user + system, from
/proc), its RSS at the end, its threads, open descriptors and (PostgreSQL) database
connections, the jobs finished and the events the streams received. The fd limit is raised
to its hard limit for this process and the server it starts. The PostgreSQL URL names a
maintenance database; the benchmark creates and drops its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from kakumei.store.db import Database
from kakumei.store.migrate import migrate
from kakumei.store.users import UserStore
from kakumei.store.workers import WorkerStore

sys.path.append(str(Path(__file__).resolve().parent))
from queue_throughput import SERVER_ENV, start_servers, tiny_png  # noqa: E402

JOB = {"prompt": "bench", "width": 64, "height": 64, "steps": 5}
USERS = 10
TICK = os.sysconf("SC_CLK_TCK")


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(needed, soft)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        raise SystemExit(f"the fd hard limit is {hard}, under the {needed} this run needs")


class Proc:
    """What /proc says about the server process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime

    def status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


class Streams:
    """Raw-socket SSE readers: counts of events by kind, and of streams that ended."""

    def __init__(self) -> None:
        self.events = 0
        self.finals = 0
        self.opened = 0
        self.refused: list[str] = []
        self.ended = 0

    async def one(self, host: str, port: int, path: str, key: str) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            self.refused.append(head.decode(errors="replace").splitlines()[0])
            writer.close()
            return
        self.opened += 1
        buffer = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"event: "):
                        self.events += 1
                        if line[7:].strip() in (b"succeeded", b"failed", b"cancelled"):
                            self.finals += 1
        finally:
            self.ended += 1
            writer.close()


def submit_jobs(url: str, keys: list[str], count: int) -> list[tuple[str, str]]:
    """(events path, key) of `count` new jobs."""
    out: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(n, count, 8):
                key = keys[i % len(keys)]
                reply = client.post("/api/v1/jobs", json=JOB, headers={"Authorization": f"Bearer {key}"})
                assert reply.status_code == 201, reply.text
                with lock:
                    out.append((reply.json()["events_url"], key))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def fake_worker(url: str, key: str, steps: int, png: str, stop: threading.Event, done: list[int]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        while not stop.is_set():
            reply = client.post("/api/v1/worker/claim", json={})
            if reply.status_code == 204:
                time.sleep(0.1)
                continue
            assert reply.status_code == 200, reply.text
            lease = reply.json()
            job_id, lease_id = lease["job_id"], lease["lease_id"]
            for step in range(1, steps + 1):
                beat = client.post(f"/api/v1/worker/jobs/{job_id}/heartbeat",
                                   json={"lease_id": lease_id, "step": step, "total": steps})
                assert beat.status_code == 200, beat.text
            body = {"lease_id": lease_id, "seed": 0, "images": [{"png_base64": png, "seed": 0, "index": 0}]}
            reply = client.post(f"/api/v1/worker/jobs/{job_id}/complete", json=body)
            assert reply.status_code == 200, reply.text
            done[0] += 1


def connections(admin_url: str, database: str | None) -> str:
    if database is None:
        return "-"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()
    return str(row[0]) if row else "?"


def run_backend(label: str, url: str, database: str | None, args: argparse.Namespace, home: Path) -> list[tuple]:
    db = Database(url)
    migrate(db)
    users = UserStore(db)
    keys = [users.add(f"viewer-{i}")[1] for i in range(USERS)]
    owner = users.add("owner")[0]
    worker_keys = [WorkerStore(db).add(owner.id, f"fake-{i}")[1] for i in range(args.workers)]
    db.close()
    os.environ.update({"KAKUMEI_MAX_EVENT_STREAMS_PER_USER": str(args.streams + 10)})
    urls, procs, socks = start_servers(url, 1, home / label)
    server, proc = urls[0], Proc(procs[0].pid)
    host, port = server.removeprefix("http://").split(":")
    rows = []
    try:
        jobs = submit_jobs(server, keys, args.streams)
        streams = Streams()

        async def main() -> None:
            tasks = []
            for n, (path, key) in enumerate([] if args.no_streams else jobs):
                tasks.append(asyncio.create_task(streams.one(host, int(port), path, key)))
                if n % 50 == 49:
                    await asyncio.sleep(0.05)  # no accept-backlog burst: streams, not connects, are measured
            while streams.opened + len(streams.refused) < len(tasks):
                await asyncio.sleep(0.1)
                if any(t.done() and t.exception() for t in tasks):
                    raise next(t.exception() for t in tasks if t.done() and t.exception())  # type: ignore[misc]
            await asyncio.sleep(2)  # settle: the first reads and position checks are done

            for name, seconds in (("idle", args.idle), ("busy", args.busy)):
                stop, done = threading.Event(), [0]
                workers = []
                if name == "busy":
                    png = base64.b64encode(tiny_png()).decode()
                    workers = [threading.Thread(target=fake_worker, args=(server, k, args.steps, png, stop, done), daemon=True)
                               for k in worker_keys]
                events0, cpu0, t0 = streams.events, proc.cpu_seconds(), time.perf_counter()
                for w in workers:
                    w.start()
                await asyncio.sleep(seconds)
                stop.set()
                cpu1, t1, events1 = proc.cpu_seconds(), time.perf_counter(), streams.events
                rows.append((label, name, (cpu1 - cpu0) / (t1 - t0), proc.status("VmRSS") / 1024,
                             proc.status("Threads"), proc.fds(), connections(args.postgres, database),
                             done[0], (events1 - events0) / (t1 - t0), streams.opened, len(streams.refused)))
                print(rows[-1], flush=True)
                await asyncio.to_thread(lambda: [w.join() for w in workers])
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(main())
        if streams.refused:
            print(f"{label}: {len(streams.refused)} streams refused, e.g. {streams.refused[0]}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        for s in socks:
            s.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle phase")
    parser.add_argument("--busy", type=float, default=10.0, help="seconds of the busy phase")
    parser.add_argument("--workers", type=int, default=2, help="fake workers in the busy phase")
    parser.add_argument("--steps", type=int, default=5, help="progress heartbeats per job")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--no-streams", action="store_true",
                        help="submit the jobs but open no stream: what the same work costs without them")
    args = parser.parse_args()
    raise_fd_limit(2 * args.streams + 256)
    os.environ.update({k: v for k, v in SERVER_ENV.items()})
    home = Path(tempfile.mkdtemp(prefix="kakumei-bench-"))
    rows = []
    try:
        for label in args.backends.split(","):
            if label == "postgresql":
                name = f"kakumei_bench_{uuid.uuid4().hex[:8]}"
                base = args.postgres.rsplit("/", 1)[0]
                with psycopg.connect(args.postgres, autocommit=True) as admin:
                    admin.execute(f'CREATE DATABASE "{name}"')
                try:
                    rows += run_backend(label, f"{base}/{name}", name, args, home)
                finally:
                    with psycopg.connect(args.postgres, autocommit=True) as admin:
                        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                rows += run_backend(label, f"sqlite:///{home / 'bench.db'}", None, args, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print()
    print(f"{0 if args.no_streams else args.streams} SSE streams on one kakumei serve (no local worker); idle {args.idle:g} s, "
          f"busy {args.busy:g} s with {args.workers} fake workers x {args.steps} progress steps + 1 PNG")
    print(f"{'database':<11} {'phase':<5} {'cpu s/s':>8} {'RSS MB':>7} {'threads':>7} {'fds':>5} {'db conns':>8} "
          f"{'jobs':>5} {'events/s':>9} {'open':>5} {'refused':>7}")
    for label, name, cpu, rss, threads, fds, conns, done, eps, opened, refused in rows:
        print(f"{label:<11} {name:<5} {cpu:>8.3f} {rss:>7.0f} {threads:>7} {fds:>5} {conns:>8} "
              f"{done:>5} {eps:>9.1f} {opened:>5} {refused:>7}")


if __name__ == "__main__":
    main()
