"""Remote workers: their keys, their record, trust, escrow, and the re-run checks of their results.

A worker key belongs to a user (who earns the credits for the work). Each worker has a
status: `new` until `trust_after` of its results in a row have been re-run and matched, then
`trusted`; a mismatch makes it `suspect` (every result checked), and `quarantine_after`
mismatches make it `quarantined` (it can claim nothing).

Escrow: what an untrusted worker earns waits in `worker_escrow` (pending) and is paid to its
owner when the worker becomes trusted; a trusted worker's sampled job waits there until its
check passes. A new worker's first `check_first` results are all re-run, later ones sampled.
A failed check (a re-run mismatch, or a result the cheap checks refused) voids every pending
row of the worker and queues a re-run of each of those jobs, so that their owners get the
picture they asked for from a trusted machine.
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
    quarantine_after: int = 1  # failed checks that quarantine a worker
    check_first: int = 5  # a new worker's first results, all re-run
    max_keys_per_user: int = 5  # worker keys one user may hold (0: no limit)
    max_new_per_network_day: int = 10  # worker keys created from one network in a day (0: no limit)

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
    units_paid: float
    results_refused: int
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


class TooManyWorkers(ValueError):
    """A limit on worker keys (per user, or new ones per network a day) was reached."""


DAY = 86400.0
PENDING_ESCROW = "SELECT id, job_id, user_id, units FROM worker_escrow WHERE worker_id = ? AND state = 'pending' ORDER BY id"


_COLUMNS = (
    "w.id, w.name, w.user_id, u.name AS owner, w.status, w.jobs_done, w.jobs_failed, w.units_done, "
    "w.run_seconds, w.verified_ok, w.mismatches, w.streak, w.units_paid, w.results_refused, w.capabilities, "
    "w.last_seen_at, w.created_at"
)
_FROM = "FROM workers w JOIN users u ON u.id = w.user_id"

# The oldest pending check; concurrent verifiers (several servers) skip each other's rows.
CLAIM_VERIFICATION = """
SELECT id, job_id, worker_id, units FROM verifications
WHERE state = 'pending' AND worker_id <> ? ORDER BY id LIMIT 1 {skip_locked}
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
        units_paid=float(row["units_paid"]),
        results_refused=int(row["results_refused"]),
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

    def add(self, user_id: int, name: str, *, network: str | None = None, limited: bool = False) -> tuple[WorkerRecord, str]:
        """A worker key for `user_id`'s machine; return its record and key (shown once).

        `limited` (a user asking over the API, from `network`): refuse with TooManyWorkers
        past the policy's keys per user and new keys per network a day, counted in the
        transaction that adds the key (the user's row is locked first, so one user's
        concurrent requests count one after another)."""
        name = name.strip()
        if not name or len(name) > 64:
            raise ValueError(f"invalid worker name {name!r}: 1 to 64 characters")
        key = WORKER_KEY_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        try:
            with self.db.transaction() as tx:
                if limited:
                    self._hold_limits(tx, user_id, network, now)
                row = tx.one(
                    "INSERT INTO workers (name, user_id, key_hash, created_at, created_from) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (name, user_id, hash_key(key), now, network),
                )
        except self.db.integrity_errors:
            raise WorkerExists(f"a worker named {name!r} already exists") from None
        assert row is not None
        record = self.get(int(row["id"]))
        assert record is not None
        return record, key

    def _hold_limits(self, tx: Transaction, user_id: int, network: str | None, now: float) -> None:
        tx.one("SELECT id FROM users WHERE id = ? {for_update}", (user_id,))
        most = self.policy.max_keys_per_user
        held = int(tx.scalar("SELECT COUNT(*) AS n FROM workers WHERE user_id = ?", (user_id,)) or 0)
        if most and held >= most:
            raise TooManyWorkers(f"you have {held} worker keys, the most this server allows one person; "
                                 "reuse one of them for another machine or ask the operator")
        per_day = self.policy.max_new_per_network_day
        if per_day and network is not None:
            made = int(tx.scalar("SELECT COUNT(*) AS n FROM workers WHERE created_from = ? AND created_at >= ?",
                                 (network, now - DAY)) or 0)
            if made >= per_day:
                raise TooManyWorkers(f"{made} worker keys were created from your network {network} in the last "
                                     "24 hours, the most this server allows; try again tomorrow")

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
        # Not durable (every claim writes it): a visit a crash loses is the next claim's to write.
        if capabilities is None:
            statement: tuple[str, tuple[Any, ...]] = (
                "UPDATE workers SET last_seen_at = ? WHERE id = ?", (self.clock(), worker_id))
        else:
            statement = ("UPDATE workers SET last_seen_at = ?, capabilities = ? WHERE id = ?",
                         (self.clock(), json.dumps(capabilities), worker_id))
        with self.db.transaction(durable=False) as tx:
            tx.batch([statement], last=True)  # with its COMMIT: one round trip

    # -- results ------------------------------------------------------------------------

    def on_completed(self, tx: Transaction, worker: WorkerRecord, job_id: str) -> None:
        """In the completing transaction: count the work, then pay it (a trusted worker's
        unchecked job) or hold it in escrow, and queue its check where one is due."""
        row = tx.one("SELECT cost, run_seconds FROM jobs WHERE id = ?", (job_id,))
        assert row is not None
        units, seconds = float(row["cost"]), float(row["run_seconds"] or 0.0)
        current = tx.one("SELECT status, jobs_done FROM workers WHERE id = ? {for_update}", (worker.id,))
        assert current is not None
        tx.run(
            "UPDATE workers SET jobs_done = jobs_done + 1, units_done = units_done + ?, "
            "run_seconds = run_seconds + ?, last_seen_at = ? WHERE id = ?",
            (units, seconds, self.clock(), worker.id),
        )
        status = WorkerStatus(current["status"])
        first = status != WorkerStatus.TRUSTED and int(current["jobs_done"]) < self.policy.check_first
        checked = first or self.random() < self.policy.rate(status)
        if checked:
            self._queue_check(tx, job_id, worker.id, units)
        if status == WorkerStatus.TRUSTED and not checked:
            self._pay(tx, worker.user_id, units, job_id, worker.id)
        elif units > 0:
            tx.run(
                "INSERT INTO worker_escrow (job_id, worker_id, user_id, units, created_at) VALUES (?, ?, ?, ?, ?)",
                (job_id, worker.id, worker.user_id, units, self.clock()),
            )

    def _queue_check(self, tx: Transaction, job_id: str, worker_id: int, units: float) -> None:
        if tx.one("SELECT id FROM verifications WHERE job_id = ?", (job_id,)) is None:
            tx.run(
                "INSERT INTO verifications (job_id, worker_id, units, created_at) VALUES (?, ?, ?, ?)",
                (job_id, worker_id, units, self.clock()),
            )

    def refuse_result(self, worker_id: int, job_id: str) -> WorkerStatus:
        """A result the cheap checks refused (blank, wrong size): a failed check, without a
        re-run. Returns the worker's status after it."""
        with self.db.transaction() as tx:
            tx.run("UPDATE workers SET results_refused = results_refused + 1 WHERE id = ?", (worker_id,))
            return self._failed(tx, worker_id)

    def pending_credit(self, worker_id: int) -> float:
        """Credit the worker earned that waits in escrow."""
        with self.db.transaction(write=False) as tx:
            value = tx.scalar("SELECT COALESCE(SUM(units), 0) AS u FROM worker_escrow "
                              "WHERE worker_id = ? AND state = 'pending'", (worker_id,))
        return float(value or 0.0)

    def on_failed(self, worker_id: int) -> None:
        with self.db.transaction() as tx:
            tx.run("UPDATE workers SET jobs_failed = jobs_failed + 1 WHERE id = ?", (worker_id,))

    # -- verification -------------------------------------------------------------------

    def claim_verification(self, verifier: str, *, not_of: int | None = None) -> Verification | None:
        """The oldest pending check, now `verifier`'s; `not_of`: skip that worker's own jobs
        (a remote worker never checks itself)."""
        with self.db.transaction() as tx:
            row = tx.one(CLAIM_VERIFICATION, (-1 if not_of is None else not_of,))
            if row is None:
                return None
            tx.run(
                "UPDATE verifications SET state = 'running', verifier = ?, claimed_at = ? WHERE id = ?",
                (verifier, self.clock(), row["id"]),
            )
        return Verification(int(row["id"]), row["job_id"], int(row["worker_id"]), float(row["units"]))

    def running_check(self, check_id: int, verifier: str) -> Verification | None:
        """A check `verifier` claimed and has not finished (None for anyone else's)."""
        with self.db.transaction(write=False) as tx:
            row = tx.one("SELECT id, job_id, worker_id, units FROM verifications "
                         "WHERE id = ? AND state = 'running' AND verifier = ?", (check_id, verifier))
        return None if row is None else Verification(int(row["id"]), row["job_id"], int(row["worker_id"]),
                                                     float(row["units"]))

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
        if not passed:
            return self._failed(tx, check.worker_id)
        if distance is not None:
            status = self._passed(tx, worker, status)
        escrowed = tx.one("SELECT state FROM worker_escrow WHERE job_id = ?", (check.job_id,))
        if escrowed is None and status != WorkerStatus.QUARANTINED:
            # A check queued before escrow held the job's credit itself.
            self._pay(tx, int(worker["user_id"]), check.units, check.job_id, check.worker_id)
        if status == WorkerStatus.TRUSTED:
            self._release(tx, check.worker_id)
        return status

    def _release(self, tx: Transaction, worker_id: int) -> None:
        """A trusted worker's escrow is paid, except jobs whose own check is still to come."""
        for row in tx.all(PENDING_ESCROW, (worker_id,)):
            waiting = tx.one("SELECT id FROM verifications WHERE job_id = ? AND state IN ('pending', 'running')",
                             (row["job_id"],))
            if waiting is not None:
                continue
            tx.run("UPDATE worker_escrow SET state = 'paid', settled_at = ? WHERE id = ?", (self.clock(), row["id"]))
            self._pay(tx, int(row["user_id"]), float(row["units"]), row["job_id"], worker_id)

    def _failed(self, tx: Transaction, worker_id: int) -> WorkerStatus:
        """A failed check: the worker's status moves, its pending credit is void, and each job
        that credit was for is re-run by a trusted machine (its check is queued)."""
        worker = tx.one("SELECT mismatches FROM workers WHERE id = ? {for_update}", (worker_id,))
        assert worker is not None
        mismatches = int(worker["mismatches"]) + 1
        status = WorkerStatus.QUARANTINED if mismatches >= self.policy.quarantine_after else WorkerStatus.SUSPECT
        tx.run("UPDATE workers SET mismatches = ?, streak = 0, status = ? WHERE id = ?",
               (mismatches, status.value, worker_id))
        for row in tx.all(PENDING_ESCROW, (worker_id,)):
            tx.run("UPDATE worker_escrow SET state = 'void', settled_at = ? WHERE id = ?", (self.clock(), row["id"]))
            self._queue_check(tx, row["job_id"], worker_id, float(row["units"]))
        return status

    def _pay(self, tx: Transaction, user_id: int, units: float, job_id: str, worker_id: int) -> None:
        # Credit per compute unit delivered; the ledger's (job, reason) index pays a job once.
        if units > 0:
            self.ledger.add(user_id, units, EARN_WORK, job_id=job_id, worker_id=worker_lease_owner(worker_id), conn=tx)
            tx.run("UPDATE workers SET units_paid = units_paid + ? WHERE id = ?", (units, worker_id))

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
