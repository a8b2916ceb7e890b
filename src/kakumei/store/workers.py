"""Remote workers: their keys, their record, trust, and the re-run checks of their results.

A worker key belongs to a user (who earns the credits for the work). Each worker has a
status: `new` until enough of its results have been re-run and matched, then `trusted`;
a mismatch makes it `suspect` (every result checked, credits withheld until each passes),
and `quarantine_after` mismatches make it `quarantined` (it can claim nothing). A sampled
job's credit waits in `verifications` until a trusted worker has re-run it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kakumei.store.db import Database, Transaction
from kakumei.store.images import ImageStore, Replacement
from kakumei.store.ledger import EARN_WORK, Ledger
from kakumei.store.users import hash_key

WORKER_KEY_PREFIX = "kkw_"


class WorkerStatus(StrEnum):
    NEW = "new"
    TRUSTED = "trusted"
    SUSPECT = "suspect"
    QUARANTINED = "quarantined"


@dataclass(frozen=True)
class TrustPolicy:
    """How much of a worker's work is re-run, and what its results do to its status."""

    sample_rate: float = 0.1  # share of a new worker's jobs re-run
    trusted_sample_rate: float = 0.01  # spot checks of trusted workers: trust can be lost
    trust_after: int = 5  # matching re-runs in a row that make a worker trusted
    quarantine_after: int = 2  # mismatches that quarantine a worker

    def rate(self, status: WorkerStatus) -> float:
        if status == WorkerStatus.SUSPECT:
            return 1.0  # nothing a suspect worker does is paid before it is checked
        if status == WorkerStatus.TRUSTED:
            return self.trusted_sample_rate
        return self.sample_rate


@dataclass(frozen=True)
class WorkerRecord:
    id: int
    name: str
    user_id: int
    owner: str
    status: WorkerStatus
    jobs_done: int
    jobs_failed: int
    units_done: float
    run_seconds: float
    verified_ok: int
    mismatches: int
    streak: int
    capabilities: dict[str, Any] | None
    last_seen_at: float | None
    created_at: float

    @property
    def lease_owner(self) -> str:
        """What jobs.worker_id holds for this worker's leases."""
        return worker_lease_owner(self.id)

    @property
    def units_per_second(self) -> float | None:
        return self.units_done / self.run_seconds if self.run_seconds > 0 else None


@dataclass(frozen=True)
class Verification:
    id: int
    job_id: str
    worker_id: int
    units: float


def worker_lease_owner(worker_id: int) -> str:
    return f"worker:{worker_id}"


class WorkerExists(ValueError):
    pass


_COLUMNS = (
    "w.id, w.name, w.user_id, u.name AS owner, w.status, w.jobs_done, w.jobs_failed, w.units_done, "
    "w.run_seconds, w.verified_ok, w.mismatches, w.streak, w.capabilities, w.last_seen_at, w.created_at"
)
_FROM = "FROM workers w JOIN users u ON u.id = w.user_id"

# The oldest pending check; concurrent verifiers (several servers) skip each other's rows.
CLAIM_VERIFICATION = """
SELECT id, job_id, worker_id, units FROM verifications
WHERE state = 'pending' ORDER BY id LIMIT 1 {skip_locked}
"""

# Worker ids seen within a window, for "workers connected" in /metrics.
RECENTLY_SEEN = "SELECT id FROM workers WHERE last_seen_at >= ?"


def _record(row: dict) -> WorkerRecord:
    return WorkerRecord(
        id=int(row["id"]),
        name=row["name"],
        user_id=int(row["user_id"]),
        owner=row["owner"],
        status=WorkerStatus(row["status"]),
        jobs_done=int(row["jobs_done"]),
        jobs_failed=int(row["jobs_failed"]),
        units_done=float(row["units_done"]),
        run_seconds=float(row["run_seconds"]),
        verified_ok=int(row["verified_ok"]),
        mismatches=int(row["mismatches"]),
        streak=int(row["streak"]),
        capabilities=json.loads(row["capabilities"]) if row["capabilities"] else None,
        last_seen_at=row["last_seen_at"],
        created_at=float(row["created_at"]),
    )


def recently_seen_workers(db: Database, since: float) -> set[str]:
    """Lease owners (as in jobs.worker_id) of remote workers that called in since `since`."""
    with db.transaction(write=False) as tx:
        return {worker_lease_owner(int(r["id"])) for r in tx.all(RECENTLY_SEEN, (since,))}


class WorkerStore:
    def __init__(
        self,
        db: Database,
        policy: TrustPolicy = TrustPolicy(),
        *,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.time,
        random: Callable[[], float] = secrets.SystemRandom().random,
    ) -> None:
        self.db = db
        self.policy = policy
        self.ledger = ledger if ledger is not None else Ledger(db, clock=clock)
        self.clock = clock
        self.random = random

    # -- keys and records ---------------------------------------------------------------

    def add(self, user_id: int, name: str) -> tuple[WorkerRecord, str]:
        """A worker key for `user_id`'s machine; return its record and key (shown once)."""
        name = name.strip()
        if not name or len(name) > 64:
            raise ValueError(f"invalid worker name {name!r}: 1 to 64 characters")
        key = WORKER_KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.db.transaction() as tx:
                row = tx.one(
                    "INSERT INTO workers (name, user_id, key_hash, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                    (name, user_id, hash_key(key), self.clock()),
                )
        except self.db.integrity_errors:
            raise WorkerExists(f"a worker named {name!r} already exists") from None
        assert row is not None
        record = self.get(int(row["id"]))
        assert record is not None
        return record, key

    def by_key(self, key: str) -> WorkerRecord | None:
        return self._one(f"SELECT {_COLUMNS} {_FROM} WHERE w.key_hash = ?", (hash_key(key),))

    def by_name(self, name: str) -> WorkerRecord | None:
        return self._one(f"SELECT {_COLUMNS} {_FROM} WHERE w.name = ?", (name,))

    def get(self, worker_id: int) -> WorkerRecord | None:
        return self._one(f"SELECT {_COLUMNS} {_FROM} WHERE w.id = ?", (worker_id,))

    def list(self, user_id: int | None = None) -> list[WorkerRecord]:
        sql, params = f"SELECT {_COLUMNS} {_FROM}", []
        if user_id is not None:
            sql, params = sql + " WHERE w.user_id = ?", [user_id]
        with self.db.transaction(write=False) as tx:
            return [_record(r) for r in tx.all(sql + " ORDER BY w.id", params)]

    def _one(self, sql: str, params: tuple[Any, ...]) -> WorkerRecord | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(sql, params)
        return None if row is None else _record(row)

    def set_status(self, name: str, status: WorkerStatus) -> bool:
        """An operator's decision (lift a quarantine, trust a known machine)."""
        with self.db.transaction() as tx:
            return tx.run("UPDATE workers SET status = ?, streak = 0 WHERE name = ?", (status.value, name)) == 1

    def seen(self, worker_id: int, capabilities: dict[str, Any] | None = None) -> None:
        with self.db.transaction() as tx:
            if capabilities is None:
                tx.run("UPDATE workers SET last_seen_at = ? WHERE id = ?", (self.clock(), worker_id))
            else:
                tx.run(
                    "UPDATE workers SET last_seen_at = ?, capabilities = ? WHERE id = ?",
                    (self.clock(), json.dumps(capabilities), worker_id),
                )

    # -- results ------------------------------------------------------------------------

    def on_completed(self, tx: Transaction, worker: WorkerRecord, job_id: str) -> None:
        """In the completing transaction: count the work, then pay it or hold it for a check."""
        row = tx.one("SELECT cost, run_seconds FROM jobs WHERE id = ?", (job_id,))
        assert row is not None
        units, seconds = float(row["cost"]), float(row["run_seconds"] or 0.0)
        tx.run(
            "UPDATE workers SET jobs_done = jobs_done + 1, units_done = units_done + ?, "
            "run_seconds = run_seconds + ?, last_seen_at = ? WHERE id = ?",
            (units, seconds, self.clock(), worker.id),
        )
        status = WorkerStatus(tx.scalar("SELECT status FROM workers WHERE id = ?", (worker.id,)))
        if self.random() < self.policy.rate(status):
            tx.run(
                "INSERT INTO verifications (job_id, worker_id, units, created_at) VALUES (?, ?, ?, ?)",
                (job_id, worker.id, units, self.clock()),
            )
        else:
            self._pay(tx, worker.user_id, units, job_id, worker.id)

    def on_failed(self, worker_id: int) -> None:
        with self.db.transaction() as tx:
            tx.run("UPDATE workers SET jobs_failed = jobs_failed + 1 WHERE id = ?", (worker_id,))

    # -- verification -------------------------------------------------------------------

    def claim_verification(self, verifier: str) -> Verification | None:
        with self.db.transaction() as tx:
            row = tx.one(CLAIM_VERIFICATION)
            if row is None:
                return None
            tx.run(
                "UPDATE verifications SET state = 'running', verifier = ?, claimed_at = ? WHERE id = ?",
                (verifier, self.clock(), row["id"]),
            )
        return Verification(int(row["id"]), row["job_id"], int(row["worker_id"]), float(row["units"]))

    def recover_verifier(self, verifier: str) -> int:
        """At start: checks this verifier was running when it stopped go back to pending."""
        with self.db.transaction() as tx:
            return tx.run(
                "UPDATE verifications SET state = 'pending', verifier = NULL WHERE state = 'running' AND verifier = ?",
                (verifier,),
            )

    def finish_verification(
        self,
        check: Verification,
        *,
        distance: float | None,
        passed: bool,
        corrected: dict[int, tuple[bytes, str, dict[str, Any]]] | None = None,
    ) -> WorkerStatus:
        """Record a re-run's outcome; return the worker's status after it.

        `passed` with `distance` None means the re-run could not be done here (the verifier
        lacks the model): the worker gets the benefit of the doubt and its credit. On a
        mismatch, `corrected` (image index -> png, infotext, metadata) replaces the job's
        images with the verifier's, so the user gets the picture they asked for.
        """
        written: list[Replacement] = []
        if not passed and corrected:
            # The verifier's files exist before the rows that name them commit.
            with self.db.transaction(write=False) as tx:
                current = ImageStore.job_images(tx, check.job_id)
            written = ImageStore.write_replacements(current, corrected)
        applied: list[Replacement] = []
        try:
            with self.db.transaction() as tx:
                status = self._record_outcome(tx, check, distance, passed)
                replaced = ImageStore.replace_rows(tx, written)
            applied = replaced  # committed: from now on the rows name the new files
        finally:
            # Remove the files no row names (every new one if the transaction failed).
            ImageStore.settle_replacements(written, applied)
        return status

    def _record_outcome(
        self, tx: Transaction, check: Verification, distance: float | None, passed: bool
    ) -> WorkerStatus:
        """The check's row, the worker's status, and its owner's pay, in one transaction."""
        worker = tx.one(
            "SELECT id, user_id, status, streak, mismatches FROM workers WHERE id = ? {for_update}",
            (check.worker_id,),
        )
        assert worker is not None
        state = "unverifiable" if distance is None else ("passed" if passed else "failed")
        tx.run(
            "UPDATE verifications SET state = ?, distance = ?, finished_at = ? WHERE id = ?",
            (state, distance, self.clock(), check.id),
        )
        status = WorkerStatus(worker["status"])
        if passed:
            if distance is not None:
                status = self._passed(tx, worker, status)
            self._pay(tx, int(worker["user_id"]), check.units, check.job_id, check.worker_id)
        else:
            mismatches = int(worker["mismatches"]) + 1
            status = (
                WorkerStatus.QUARANTINED if mismatches >= self.policy.quarantine_after else WorkerStatus.SUSPECT
            )
            tx.run(
                "UPDATE workers SET mismatches = ?, streak = 0, status = ? WHERE id = ?",
                (mismatches, status.value, check.worker_id),
            )
        return status

    def _pay(self, tx: Transaction, user_id: int, units: float, job_id: str, worker_id: int) -> None:
        # Credit per compute unit delivered; the ledger's (job, reason) index pays a job once.
        if units > 0:
            self.ledger.add(user_id, units, EARN_WORK, job_id=job_id, worker_id=worker_lease_owner(worker_id), conn=tx)

    def _passed(self, tx: Transaction, worker: dict, status: WorkerStatus) -> WorkerStatus:
        streak = int(worker["streak"]) + 1
        if streak >= self.policy.trust_after and status in (WorkerStatus.NEW, WorkerStatus.SUSPECT):
            # A suspect worker first earns its way back to new, then to trusted.
            status = WorkerStatus.TRUSTED if status == WorkerStatus.NEW else WorkerStatus.NEW
            streak = 0 if status == WorkerStatus.NEW else streak
        tx.run(
            "UPDATE workers SET verified_ok = verified_ok + 1, streak = ?, status = ? WHERE id = ?",
            (streak, status.value, worker["id"]),
        )
        return status

    def verification_counts(self, worker_id: int) -> dict[str, int]:
        """Checks of one worker by state: pending, running, passed, failed, unverifiable."""
        with self.db.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT state, COUNT(*) AS n FROM verifications WHERE worker_id = ? GROUP BY state", (worker_id,)
            )
        return {r["state"]: int(r["n"]) for r in rows}
