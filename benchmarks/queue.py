"""Queue throughput and claim latency with a no-op engine, on SQLite and PostgreSQL.

    python benchmarks/queue.py [--postgres URL] [--jobs N] [--queued N] [--users N]

Prints jobs/s through submit -> claim -> run (no-op) -> complete, and the latency of one
fair claim with a small queue and with --queued jobs from --users users, side by side. The
PostgreSQL URL names a maintenance database; the benchmark creates and drops its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file shares its name with the standard library's `queue`, which psycopg imports:
# the benchmarks folder goes last on the import path, after the standard library (its
# helpers, such as _claims.py, are still found).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402

from kakumei.fairness.cost import request_cost  # noqa: E402
from kakumei.protocol import Capabilities  # noqa: E402
from kakumei.schemas import GenerationRequest  # noqa: E402
from kakumei.server.job_source import StoreJobSource  # noqa: E402
from kakumei.store.db import Database  # noqa: E402
from kakumei.store.images import ImageStore  # noqa: E402
from kakumei.store.jobs import (  # noqa: E402
    SELECT_GROUP_NEXT_USER,
    SELECT_NEXT_GROUP,
    SELECT_USER_NEXT_JOB,
    JobStore,
    NewJob,
    _with_caps,
)
from kakumei.store.migrate import migrate  # noqa: E402
from kakumei.store.users import UserStore  # noqa: E402
from kakumei.worker import Worker  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()

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
