"""What the rate limits cost per request, by where the buckets live: this process's memory
(TokenBuckets, SQLite servers), the database (SharedBuckets on SQLite and on PostgreSQL) or
Redis (SharedBuckets over RedisLimits, setting redis_url).

    python benchmarks/shared_limits.py [--postgres URL] [--redis URL] [--requests N]
        [--callers K] [--threads 1,8] [--admission]

One request is what `Admission.check` asks the buckets for each submit: whether the caller
ignored a wait it was told (per person and per address), then a token from the person's bucket
and one from the address's. Callers rotate over K keys and K addresses with a burst no run
uses up, so every request is granted, as most are. Prints requests/s, the median (p50) and p99
of one request (µs) and the median's ratio to memory's in the same run, per backend and thread
count (the median, since on a busy machine a few descheduled requests swamp a mean).
--admission adds the whole of `Admission.check` per submit (bans, timeouts, the buckets,
free-tier caps, queue counts), one thread, on SQLite and PostgreSQL with the limits in the
server's default place (memory on SQLite, the database on PostgreSQL) and in Redis: the share
of a submit's admission that the buckets are.
The PostgreSQL URL names a maintenance database; the benchmark creates and drops its own.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from kakumei.config import Settings
from kakumei.fairness.limits import TokenBuckets
from kakumei.schemas import GenerationRequest
from kakumei.server.admission import Admission
from kakumei.store.buckets import SharedBuckets
from kakumei.store.db import Database
from kakumei.store.images import ImageStore
from kakumei.store.jobs import JobStore
from kakumei.store.migrate import migrate
from kakumei.store.moderation import Moderation
from kakumei.store.redis_limits import RedisLimits
from kakumei.store.users import UserStore


def request(by_key: Any, by_ip: Any, key: str, addr: str) -> None:
    now = time.time()
    by_key.offence(key, now) | by_ip.offence(key, now)
    assert by_key.take(key, now) == 0.0
    assert by_ip.take(addr, now, caller=key) == 0.0


def run(make: Any, requests: int, callers: int, threads: int) -> tuple[float, list[float]]:
    """(requests/s, each request's seconds) with `threads` threads, each its own buckets from
    `make()` (a server's threads share one object; its database connections are per thread)."""
    per_thread = requests // threads
    times: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def work(n: int) -> None:
        by_key, by_ip = make()
        mine = times[n]
        request(by_key, by_ip, "warm", "warm")
        start.wait()
        for i in range(per_thread):
            caller = (i * threads + n) % callers
            t0 = time.perf_counter()
            request(by_key, by_ip, f"user:{caller}", f"10.{caller // 250}.{caller % 250}.1")
            mine.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    every = sorted(t for mine in times for t in mine)
    return len(every) / elapsed, every


def admission_times(db: Database, limits: RedisLimits | None, folder: Path, requests: int, callers: int) -> list[float]:
    """Each of `requests` Admission.check calls' seconds, over `callers` registered users."""
    settings = Settings(home=folder / "home", key_rate_per_minute=1.0, key_burst=1_000_000,
                        ip_rate_per_minute=1.0, ip_burst=1_000_000)
    jobs = JobStore(db, ImageStore(db, folder / "images"))
    admission = Admission(settings, db, jobs, Moderation(db, offences=limits), limits=limits)
    users = UserStore(db)
    people = [users.add(f"bench-{uuid.uuid4().hex[:8]}")[0] for _ in range(callers)]
    job = GenerationRequest(prompt="a red fox", width=512, height=512, steps=20)
    times = []
    for i in range(requests + 50):
        user = people[i % callers]
        t0 = time.perf_counter()
        assert admission.check(user, f"10.{i % callers // 250}.{i % callers % 250}.1", job) is None
        if i >= 50:  # the first ones warm up
            times.append(time.perf_counter() - t0)
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--requests", type=int, default=4000, help="requests per row")
    parser.add_argument("--callers", type=int, default=1000, help="distinct keys and addresses")
    parser.add_argument("--threads", default="1,8", help="comma-separated thread counts")
    parser.add_argument("--admission", action="store_true", help="also time the whole Admission.check")
    args = parser.parse_args()

    rate, burst = 1.0, 1_000_000  # a token a minute, a burst no run uses up
    name = f"kakumei_bench_{uuid.uuid4().hex[:8]}"
    base = args.postgres.rsplit("/", 1)[0]
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    folder = Path(tempfile.mkdtemp(prefix="kakumei-bench-"))
    prefix = f"kakumei-bench-{uuid.uuid4().hex[:8]}:"
    databases = {"sqlite": Database(f"sqlite:///{folder / 'bench.db'}"), "postgresql": Database(f"{base}/{name}")}
    for db in databases.values():
        migrate(db)
    redis_limits = RedisLimits(args.redis, prefix)
    backends = {
        "memory": lambda: (TokenBuckets(rate, burst), TokenBuckets(rate, burst)),
        "sqlite": lambda: (SharedBuckets(databases["sqlite"], "key", rate, burst),
                           SharedBuckets(databases["sqlite"], "ip", rate, burst)),
        "postgresql": lambda: (SharedBuckets(databases["postgresql"], "key", rate, burst),
                               SharedBuckets(databases["postgresql"], "ip", rate, burst)),
        "redis": lambda: (SharedBuckets(redis_limits, "key", rate, burst), SharedBuckets(redis_limits, "ip", rate, burst)),
    }
    rows = []
    try:
        run(backends["memory"], args.requests, args.callers, 1)  # warm up the interpreter's paths
        for threads in (int(t) for t in args.threads.split(",")):
            memory_p50 = None
            for backend, make in backends.items():
                if backend == "memory":  # one object for every thread, as a server holds it
                    shared = make()
                    make = lambda shared=shared: shared  # noqa: E731
                per_second, every = run(make, args.requests, args.callers, threads)
                p50 = statistics.median(every) * 1e6
                memory_p50 = memory_p50 or p50
                row = (backend, threads, per_second, p50, every[int(len(every) * 0.99) - 1] * 1e6, p50 / memory_p50)
                print(f"{row[0]:<10} {row[1]:>2} threads: {row[2]:9.0f} requests/s, p50 {row[3]:8.1f} µs, "
                      f"p99 {row[4]:8.1f} µs, {row[5]:7.1f}x memory", flush=True)
                rows.append(row)
        checks = []
        if args.admission:
            with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
                for schema in ("a_db", "a_redis"):
                    conn.execute(f"CREATE SCHEMA {schema}")
            for label, url, limits in (
                ("sqlite, memory", f"sqlite:///{folder / 'a-memory.db'}", None),
                ("sqlite, redis", f"sqlite:///{folder / 'a-redis.db'}", redis_limits),
                ("postgresql, database", f"{base}/{name}?options=-csearch_path%3Da_db", None),
                ("postgresql, redis", f"{base}/{name}?options=-csearch_path%3Da_redis", redis_limits),
            ):
                db = Database(url)
                migrate(db)
                every = admission_times(db, limits, folder, args.requests // 4, min(args.callers, 200))
                db.close()
                p50, p99 = statistics.median(every) * 1e6, every[int(len(every) * 0.99) - 1] * 1e6
                print(f"admission {label:<22}: p50 {p50:8.1f} µs, p99 {p99:8.1f} µs", flush=True)
                checks.append((label, p50, p99))
    finally:
        for key in redis_limits.client.scan_iter(match=prefix + "*", count=1000):
            redis_limits.client.delete(key)
        redis_limits.close()
        for db in databases.values():
            db.close()
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print()
    print(f"rate-limit buckets per submit (2 offence checks + 2 takes), {args.callers} callers, "
          f"{args.requests} requests per row")
    print(f"{'where':<10} {'threads':>7} {'requests/s':>11} {'p50 µs':>9} {'p99 µs':>9} {'p50 vs memory':>14}")
    for backend, threads, per_second, p50, p99, ratio in rows:
        print(f"{backend:<10} {threads:>7} {per_second:>11.0f} {p50:>9.1f} {p99:>9.1f} {ratio:>13.1f}x")
    if checks:
        print()
        print(f"the whole Admission.check per submit, one thread, {args.requests // 4} checks each")
        print(f"{'database, limits in':<22} {'p50 µs':>9} {'p99 µs':>9} {'p50 vs first':>13}")
        for label, p50, p99 in checks:
            print(f"{label:<22} {p50:>9.1f} {p99:>9.1f} {p50 / checks[0][1]:>12.2f}x")


if __name__ == "__main__":
    main()
