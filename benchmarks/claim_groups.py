"""Latency of the fair claim (group -> person -> job) with a big queue, on SQLite and PostgreSQL.

    python benchmarks/claim_groups.py [--postgres URL] [--queued N] [--users N] [--groups N]

For each database, three queues measured in the same run:
  - small:   1,000 queued jobs, 100 people in 20 network groups (the baseline);
  - alone:   --queued jobs from --users people, each a group of their own (network groups
             off: today's rules, one group per person);
  - grouped: the same jobs and people in --groups network groups.
Prints the median and p99 of `JobStore.claim` (one transaction: choose, lease, charge) over
--samples claims, each followed by completing the job. The queue is seeded with bulk SQL in
the layout the store keeps (counters spread out, so the walks meet real orders), then
ANALYZEd. The PostgreSQL URL names a maintenance database; the benchmark makes and drops its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The benchmarks folder goes last on the import path, after the standard library, so that
# no file here shadows a standard-library module (its helpers, such as _claims.py, are
# still found).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import psycopg  # noqa: E402

from kakumei.fairness.cost import request_cost  # noqa: E402
from kakumei.schemas import GenerationRequest  # noqa: E402
from kakumei.store.db import Database, render  # noqa: E402
from kakumei.store.images import ImageStore  # noqa: E402
from kakumei.store.jobs import JobStore, request_hash  # noqa: E402
from kakumei.store.migrate import migrate  # noqa: E402
from _claims import claim_times  # noqa: E402

REQUEST = GenerationRequest(prompt="bench", width=64, height=64, steps=2)
COST = request_cost(REQUEST, "m")


def _many(db: Database, tx, sql: str, rows: list[tuple]) -> None:
    text = render(sql, db.dialect)
    if db.dialect == "sqlite":
        tx._conn.executemany(text, rows)
    else:
        with tx._conn.cursor() as cur:
            cur.executemany(text, rows)


def seed(db: Database, queued: int, users: int, groups: int | None, rng: random.Random) -> None:
    """`queued` jobs from `users` people; `groups` network groups, or None: one group each."""
    now = time.time()
    body, digest = REQUEST.model_dump_json(), request_hash(REQUEST)
    with db.transaction() as tx:
        n_groups = users if groups is None else groups
        keys = [f"user:{i + 2}" if groups is None else f"net:10.{i // 256}.{i % 256}.0/24" for i in range(n_groups)]
        _many(db, tx, "INSERT INTO fair_groups (key, weight, virtual_counter, created_at) VALUES (?, 1.0, ?, ?)",
              [(k, rng.random(), now) for k in keys])
        group_ids = [int(r["id"]) for r in tx.all("SELECT id FROM fair_groups ORDER BY id")]
        _many(db, tx, "INSERT INTO users (name, weight, virtual_counter, group_id, created_at) VALUES (?, 1.0, ?, ?, ?)",
              [(f"u{i}", rng.random(), group_ids[i % n_groups], now) for i in range(users)])
        user_rows = tx.all("SELECT id, group_id FROM users WHERE group_id IS NOT NULL ORDER BY id")
        _many(db, tx,
              "INSERT INTO jobs (id, user_id, group_id, client_addr, state, request, request_hash, model, pixels, "
              "steps, image_count, cost, max_attempts, created_at, batch_key) "
              "VALUES (?, ?, ?, '10.0.0.1', 'queued', ?, ?, 'm', 4096, 2, 1, ?, 3, ?, NULL)",
              [(uuid.uuid4().hex, int(u["id"]), int(u["group_id"]), body, digest, COST, now + i)
               for i, u in ((i, user_rows[i % len(user_rows)]) for i in range(queued))])
        tx.execute("UPDATE users SET queued_jobs = (SELECT COUNT(*) FROM jobs j WHERE j.user_id = users.id "
                   "AND j.state = 'queued'), queued_cost = (SELECT COALESCE(SUM(cost), 0) FROM jobs j "
                   "WHERE j.user_id = users.id AND j.state = 'queued')")
        tx.execute("UPDATE fair_groups SET queued_jobs = (SELECT COUNT(*) FROM jobs j WHERE j.group_id = "
                   "fair_groups.id AND j.state = 'queued'), queued_cost = (SELECT COALESCE(SUM(cost), 0) "
                   "FROM jobs j WHERE j.group_id = fair_groups.id AND j.state = 'queued')")
    with db.transaction() as tx:
        tx.execute("ANALYZE")


def measure(url: str, queued: int, users: int, groups: int | None, samples: int, images: Path) -> tuple[float, float, float]:
    """(seconds to seed, median claim ms, p99 claim ms)."""
    db = Database(url)
    migrate(db)
    store = JobStore(db, ImageStore(db, images))
    start = time.perf_counter()
    seed(db, queued, users, groups, random.Random(7))
    seeded = time.perf_counter() - start
    times = claim_times(store, samples)
    db.close()
    return seeded, statistics.median(times) * 1000, times[min(len(times) - 1, int(len(times) * 0.99))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=2_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()

    name = f"kakumei_bench_{uuid.uuid4().hex[:8]}"
    base = args.postgres.rsplit("/", 1)[0]
    tmp = Path(tempfile.mkdtemp(prefix="kakumei-bench-"))
    cases = (("small", 1_000, 100, 20), ("alone", args.queued, args.users, None),
             ("grouped", args.queued, args.users, args.groups))
    backends = [("sqlite", lambda tag: f"sqlite:///{tmp / tag}.db")]
    if not args.sqlite_only:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        backends.append(("postgresql", lambda tag: f"{base}/{name}?options=-csearch_path%3D{tag}"))
    try:
        print(f"{'database':<11} {'queue':<8} {'jobs':>8} {'people':>7} {'groups':>7} {'seed s':>7} "
              f"{'median ms':>10} {'p99 ms':>8}")
        for label, make_url in backends:
            for tag, queued, users, groups in cases:
                if label == "postgresql":
                    with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
                        conn.execute(f"CREATE SCHEMA {tag}")
                seeded, median, p99 = measure(make_url(tag), queued, users, groups, args.samples, tmp / "images")
                shown = users if groups is None else groups
                print(f"{label:<11} {tag:<8} {queued:>8} {users:>7} {shown:>7} {seeded:>7.1f} {median:>10.2f} {p99:>8.2f}",
                      flush=True)
    finally:
        if not args.sqlite_only:
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
