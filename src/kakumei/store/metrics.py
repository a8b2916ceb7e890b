"""Aggregate reads for /metrics: queue length, jobs by state, durations, workers, compute by
user class. Each is one query; the per-job ones go through indexes or a single pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kakumei.store.db import Database

QUEUED_BY_MODEL = "SELECT model, COUNT(*) AS n FROM jobs WHERE state = 'queued' GROUP BY model"
JOBS_BY_STATE = "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"
BUSY_WORKER_IDS = "SELECT DISTINCT worker_id FROM jobs WHERE state IN ('leased', 'running')"
BACKLOGGED_USERS = "SELECT COUNT(*) AS n FROM users WHERE queued_jobs > 0"

# The class a user's compute counts under. Contributors (credit from running workers) will be
# a third class once the credit ledger exists.
USER_CLASS = "CASE WHEN u.is_anonymous = 1 THEN 'anonymous' ELSE 'registered' END"

# Seconds from submit to start (queue wait) and the worker's reported run time, of succeeded jobs.
WAIT_SECONDS = "(COALESCE(j.started_at, j.claimed_at, j.finished_at) - j.created_at)"
RUN_SECONDS = "COALESCE(j.run_seconds, 0)"

# One pass over succeeded jobs per user class: counts, sums, and one cumulative count per
# histogram bucket ({wait_buckets}, {run_buckets} are filled with SUM(CASE ...) columns).
SUCCEEDED_BY_CLASS = f"""
SELECT {USER_CLASS} AS user_class, COUNT(*) AS n, COALESCE(SUM(j.cost), 0) AS units,
    COALESCE(SUM({WAIT_SECONDS}), 0) AS wait_sum, COALESCE(SUM({RUN_SECONDS}), 0) AS run_sum
    {{wait_buckets}} {{run_buckets}}
FROM jobs j JOIN users u ON u.id = j.user_id
WHERE j.state = 'succeeded'
GROUP BY {USER_CLASS}
"""

# Compute units served per class over a recent window (jobs_finished index on finished_at).
RECENT_UNITS_BY_CLASS = f"""
SELECT {USER_CLASS} AS user_class, COALESCE(SUM(j.cost), 0) AS units
FROM jobs j JOIN users u ON u.id = j.user_id
WHERE j.state = 'succeeded' AND j.finished_at >= ?
GROUP BY {USER_CLASS}
"""


@dataclass
class Histogram:
    """Cumulative bucket counts (upper bound -> count of values <= bound), count and sum."""

    buckets: dict[float, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0


@dataclass
class ClassStats:
    jobs: int
    units: float
    wait: Histogram
    run: Histogram


def queued_by_model(db: Database) -> dict[str, int]:
    with db.transaction(write=False) as tx:
        return {r["model"]: int(r["n"]) for r in tx.all(QUEUED_BY_MODEL)}


def jobs_by_state(db: Database) -> dict[str, int]:
    with db.transaction(write=False) as tx:
        return {r["state"]: int(r["n"]) for r in tx.all(JOBS_BY_STATE)}


def busy_workers(db: Database) -> set[str]:
    with db.transaction(write=False) as tx:
        return {r["worker_id"] for r in tx.all(BUSY_WORKER_IDS) if r["worker_id"]}


def backlogged_users(db: Database) -> int:
    with db.transaction(write=False) as tx:
        return int(tx.scalar(BACKLOGGED_USERS) or 0)


def _bucket_columns(expr: str, prefix: str, bounds: Sequence[float]) -> str:
    return "".join(
        f", SUM(CASE WHEN {expr} <= ? THEN 1 ELSE 0 END) AS {prefix}{i}" for i in range(len(bounds))
    )


def succeeded_by_class(
    db: Database, wait_bounds: Sequence[float], run_bounds: Sequence[float]
) -> dict[str, ClassStats]:
    """Per user class: succeeded jobs, compute units, and wait/run time histograms."""
    sql = SUCCEEDED_BY_CLASS.replace("{wait_buckets}", _bucket_columns(WAIT_SECONDS, "w", wait_bounds)).replace(
        "{run_buckets}", _bucket_columns(RUN_SECONDS, "r", run_bounds)
    )
    params = [*wait_bounds, *run_bounds]
    with db.transaction(write=False) as tx:
        rows = tx.all(sql, params)
    stats = {}
    for row in rows:
        n = int(row["n"])
        wait = Histogram({b: int(row[f"w{i}"] or 0) for i, b in enumerate(wait_bounds)}, n, float(row["wait_sum"]))
        run = Histogram({b: int(row[f"r{i}"] or 0) for i, b in enumerate(run_bounds)}, n, float(row["run_sum"]))
        stats[row["user_class"]] = ClassStats(n, float(row["units"]), wait, run)
    return stats


def recent_units_by_class(db: Database, since: float) -> dict[str, float]:
    """Compute units of jobs that succeeded at or after `since`, per user class."""
    with db.transaction(write=False) as tx:
        return {r["user_class"]: float(r["units"]) for r in tx.all(RECENT_UNITS_BY_CLASS, (since,))}
