"""Observed seconds per compute unit per (model, worker class): what calibrates the cost
factors (fairness/cost.py calibrated_factor) and the ETAs (JobStore.place).

A sample is written in the transaction that completes a job, from the run seconds the store
measured (started -> finished), divided by the job's base units (steps x pixels x images,
no model factor, so that the calibrated factors never feed back into their own samples).
"""

from __future__ import annotations

import json
from typing import Any

from kakumei.fairness.cost import Observed, Speed, base_units
from kakumei.schemas import STORED, GenerationRequest
from kakumei.store.db import Database, Transaction

# Weight of a new sample in the moving average once there are 1 / EMA_WEIGHT samples; the
# first ones make a plain mean, so that one early outlier does not stay for long.
EMA_WEIGHT = 0.1

# A job's run seconds below this say nothing about the model (a clock step, a replay).
MIN_RUN_SECONDS = 1e-3

_UPSERT = f"""
INSERT INTO model_speeds (model, worker_class, seconds_per_unit, samples, updated_at)
VALUES (?, ?, ?, 1, ?)
ON CONFLICT (model, worker_class) DO UPDATE SET
    seconds_per_unit = model_speeds.seconds_per_unit
        + (excluded.seconds_per_unit - model_speeds.seconds_per_unit)
        * (CASE WHEN 1.0 / (model_speeds.samples + 1) > {EMA_WEIGHT} THEN 1.0 / (model_speeds.samples + 1)
           ELSE {EMA_WEIGHT} END),
    samples = model_speeds.samples + 1,
    updated_at = excluded.updated_at
"""

LOCAL_CLASS = "local"
REMOTE_CLASS = "remote"


def worker_class(tx: Transaction, worker_id: str | None) -> str:
    """The class a job's worker is counted in: a remote worker's reported device when its
    capabilities name one, else "remote"; the server's own worker is "local"."""
    return _worker(tx, worker_id)[0]


def _worker(tx: Transaction, worker_id: str | None) -> tuple[str, bool]:
    """The worker's class and whether its seconds are believed: the server's own worker's and
    trusted remote workers' (a new or suspect worker could report any time it likes)."""
    if not worker_id or not worker_id.startswith("worker:"):
        return LOCAL_CLASS, True
    try:
        wid = int(worker_id.split(":", 1)[1])
    except ValueError:
        return REMOTE_CLASS, False
    row = tx.one("SELECT status, capabilities FROM workers WHERE id = ?", (wid,))
    if row is None:
        return REMOTE_CLASS, False
    device = json.loads(row["capabilities"]).get("device") if row["capabilities"] else None
    name = f"{REMOTE_CLASS}:{device}" if isinstance(device, str) and device else REMOTE_CLASS
    return name, row["status"] == "trusted"


def record(db: Database, row: dict[str, Any], run_seconds: float, now: float) -> None:
    """Add the completed job `row` (request, model, worker_id, cancel_requested) as a sample.
    Jobs cut short by a cancel, instant runs, refiner jobs (two models in one run) and the
    runs of workers not trusted yet are not samples.

    The worker's status is read on its own (no lock: it could change right after a read
    inside the transaction too), so that an untrusted worker's run costs one read and a
    sample one non-durable write with its COMMIT: a sample a crash loses is one sample."""
    if run_seconds < MIN_RUN_SECONDS or row.get("cancel_requested"):
        return
    with db.transaction(write=False) as tx:
        name, believed = _worker(tx, row.get("worker_id"))
    if not believed:
        return
    request = GenerationRequest.model_validate_json(row["request"], context=STORED)
    units = base_units(request, row["model"])
    if units is None or units <= 0:
        return
    with db.transaction(durable=False) as tx:
        tx.batch([(_UPSERT, (row["model"], name, run_seconds / units, now))], last=True)


def observed(db: Database) -> Observed:
    """Every (model, worker class) speed."""
    with db.transaction(write=False) as tx:
        return observed_in(tx)


OBSERVED = "SELECT model, worker_class, seconds_per_unit, samples FROM model_speeds"


def observed_in(tx: Transaction) -> Observed:
    return observed_from(tx.all(OBSERVED))


def observed_from(rows: list[dict[str, Any]]) -> Observed:
    """The speeds of OBSERVED's rows (read by the caller, in a batch say)."""
    return {(r["model"], r["worker_class"]): Speed(float(r["seconds_per_unit"]), int(r["samples"])) for r in rows}
