"""The job queue: submit, fair claim, heartbeat, complete exactly once, fail, cancel, leases.

Lifecycle: queued -> leased (worker, lease_expires_at) -> running -> succeeded | failed |
cancelled. Every change that a worker makes names its lease; once a lease has expired and
the job went back to the queue, the old lease can change nothing, which is what makes
"completes exactly once" hold with workers that die, stall or come back late.

Scheduling SQL is kept as named constants below so that tests can read their query plans.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kakumei.fairness import cost as cost_rule
from kakumei.fairness import shares
from kakumei.protocol import Capabilities, HeartbeatReply, Progress
from kakumei.schemas import STORED, GenerationRequest
from kakumei.store.db import Database, Transaction
from kakumei.store.images import ImageStore, PendingImage
from kakumei.store.inputs import InputStore
from kakumei.store.ledger import REFUND, SPEND_GENERATION, Ledger
from kakumei.store import speeds
from kakumei.store.quotas import QueueLimits, count_reads, hold_credit, hold_queue_limits, lock_shared_caps
from kakumei.fairness.groups import OWN
from kakumei.store.users import UserStore

log = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class Job:
    id: str
    user_id: int
    state: JobState
    request: GenerationRequest
    model: str
    cost: float
    priority: int
    attempts: int
    max_attempts: int
    worker_id: str | None
    lease_expires_at: float | None
    cancel_requested: bool
    progress_step: int | None
    progress_total: int | None
    seed: int | None
    error: str | None
    idempotency_key: str | None
    client_addr: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Lease:
    """A claimed job and the token that every report about it must carry."""

    job: Job
    lease_id: str
    expires_at: float


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: str
    kind: str
    data: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class NewJob:
    user_id: int
    request: GenerationRequest
    model: str
    cost: float
    idempotency_key: str | None = None
    client_addr: str | None = None
    priority: int = 0
    inputs: tuple[bytes, ...] = ()  # image files the request names by reference (stored_form)
    # Whose key space the idempotency key is in, within the user: anonymous visitors share
    # one user, so theirs is their address; registered users' is "" (any address).
    idempotency_scope: str = ""
    # The fair-share group the job joins if its owner has nothing queued (fairness/groups.py
    # group_key); None: the owner's own group.
    group: str | None = None


class IdempotencyConflict(ValueError):
    """The same Idempotency-Key came with a different request."""


_JOB_COLUMNS = (
    "seq, id, user_id, state, request, model, cost, priority, attempts, max_attempts, worker_id, "
    "lease_expires_at, cancel_requested, progress_step, progress_total, seed, error, "
    "idempotency_key, client_addr, created_at, started_at, finished_at"
)

# -- scheduling SQL -------------------------------------------------------------------------
# `{can_run}` is the worker's capability filter on jobs j (see _can_run).

# Fair share is a hierarchy: the backlogged group with the lowest counter that has a job this
# worker can run, then in it the backlogged person with the lowest counter that has one, then
# that person's own priority and age. Each level walks its partial index in counter order
# (fair_groups_backlogged, users_backlogged_in_group) and probes jobs through an index
# (jobs_queued_by_group, jobs_queued_by_user), so with many queued jobs it reads a handful of
# rows. Probes are scalar subqueries ordered like their index rather than EXISTS: with EXISTS,
# SQLite picks jobs_by_user and reads the user's whole history. On PostgreSQL concurrent
# claimers skip a group that another claimer is charging right now; a claimer holds the group
# row before it writes the person's, as submits do (store/users.py, UserStore.place).
SELECT_NEXT_GROUP = """
SELECT g.id, g.weight, g.virtual_counter FROM fair_groups g
WHERE g.queued_jobs > 0
  AND (SELECT j.seq FROM jobs j
       WHERE j.group_id = g.id AND j.state = 'queued' AND {can_run}
       LIMIT 1) IS NOT NULL
ORDER BY g.virtual_counter, g.queued_jobs, g.id
LIMIT 1 {lock_group_skip}
"""

# Model affinity: like SELECT_NEXT_GROUP, but only groups whose counter is within a bound
# (about one job-time past the fairest choice, see claim_batch) and, through {can_run}, only
# the loaded model. The bound is a range on fair_groups_backlogged, so the walk stops there.
SELECT_NEXT_GROUP_WITHIN = """
SELECT g.id, g.weight, g.virtual_counter FROM fair_groups g
WHERE g.queued_jobs > 0 AND g.virtual_counter <= ?
  AND (SELECT j.seq FROM jobs j
       WHERE j.group_id = g.id AND j.state = 'queued' AND {can_run}
       LIMIT 1) IS NOT NULL
ORDER BY g.virtual_counter, g.queued_jobs, g.id
LIMIT 1 {lock_group_skip}
"""

# In the chosen group: its backlogged person with the lowest counter that has a runnable job.
SELECT_GROUP_NEXT_USER = """
SELECT u.id, u.weight FROM users u
WHERE u.group_id = ? AND u.queued_jobs > 0
  AND (SELECT j.seq FROM jobs j
       WHERE j.user_id = u.id AND j.state = 'queued' AND {can_run}
       ORDER BY j.priority DESC, j.seq LIMIT 1) IS NOT NULL
ORDER BY u.virtual_counter, u.queued_jobs, u.id
LIMIT 1
"""

# Cross-user batching walks the backlogged groups within the bound in counter order (a range
# on fair_groups_backlogged) and reads the *next* job's batch key of each one's fairest person
# with a job for the model (head of their own order, so nobody's order changes): a few index
# probes. Done as separate reads rather than one query with "= key", whose selectivity
# estimate makes PostgreSQL scan and sort everything.
BATCH_CANDIDATES = """
SELECT g.id FROM fair_groups g
WHERE g.queued_jobs > 0 AND g.virtual_counter <= ?
ORDER BY g.virtual_counter, g.queued_jobs, g.id
LIMIT ?
"""
HEAD_BATCH_KEY = """
SELECT j.batch_key FROM jobs j
WHERE j.user_id = ? AND j.state = 'queued' AND {can_run}
ORDER BY j.priority DESC, j.seq
LIMIT 1
"""
PERSON_IN_GROUP = "SELECT u.id, u.weight FROM users u WHERE u.id = ? AND u.group_id = ? AND u.queued_jobs > 0"
GROUP_BY_ID = "SELECT g.id, g.weight, g.virtual_counter FROM fair_groups g WHERE g.id = ? AND g.queued_jobs > 0 {lock_group_skip}"

# That person's next runnable job: their own priority first, then age.
SELECT_USER_NEXT_JOB = """
SELECT j.seq, j.id, j.cost FROM jobs j
WHERE j.user_id = ? AND j.state = 'queued' AND {can_run}
ORDER BY j.priority DESC, j.seq
LIMIT 1 {skip_locked}
"""

LEASE_JOB = f"""
UPDATE jobs SET state = 'leased', worker_id = ?, lease_id = ?, lease_expires_at = ?,
    claimed_at = ?, charged = ?, group_charged = ?, progress_step = NULL, progress_total = NULL
WHERE seq = ? AND state = 'queued'
RETURNING {_JOB_COLUMNS}
"""

# The counters themselves (queued_jobs, queued_cost, virtual_counter) are written only by
# UserStore's queue bookkeeping (store/users.py): enqueue, charge, dequeue, refund.
# The first job's group counter before its claim, and that claim's charge to the group.
GROUP_COUNTER_BEFORE_CLAIM = """
SELECT g.virtual_counter - j.group_charged AS before, j.group_charged AS charge
FROM fair_groups g JOIN jobs j ON j.group_id = g.id WHERE j.id = ?
"""

# A job as its lease holder's report finds it: only while that lease still holds it, so a
# report on a lost lease (expired and re-queued, or already finished) finds nothing.
HELD_JOB = """
SELECT seq, id, user_id, group_id, attempts, max_attempts, cancel_requested, charged, group_charged, cost,
    started_at, claimed_at, image_count, worker_id, reserved, request, model FROM jobs
WHERE id = ? AND lease_id = ? AND state IN ('leased', 'running') {for_update}
"""

EXPIRED_LEASES = """
SELECT seq, id, user_id, group_id, attempts, max_attempts, cancel_requested, charged, group_charged, cost,
    reserved FROM jobs
WHERE state IN ('leased', 'running') AND lease_expires_at < ?
ORDER BY lease_expires_at
LIMIT 100 {skip_locked}
"""

JOBS_OF_WORKER = """
SELECT seq, id, user_id, group_id, attempts, max_attempts, cancel_requested, charged, group_charged, cost,
    reserved FROM jobs
WHERE state IN ('leased', 'running') AND worker_id = ?
{skip_locked}
"""

# Groups with queued work, and the people with queued work in one group, for queue
# positions under fair sharing (both read through their backlogged partial indexes).
GROUP_BACKLOGS = """
SELECT id, virtual_counter, weight, queued_jobs, queued_cost FROM fair_groups WHERE queued_jobs > 0
"""
MEMBER_BACKLOGS = """
SELECT id, virtual_counter, weight, queued_jobs, queued_cost FROM users WHERE group_id = ? AND queued_jobs > 0
"""

# A user's own queued jobs that will go before the job at (priority, seq).
OWN_AHEAD = """
SELECT COUNT(*) AS n, COALESCE(SUM(cost), 0) AS cost FROM jobs
WHERE user_id = ? AND state = 'queued' AND (priority > ? OR (priority = ? AND seq < ?))
"""

RECENT_THROUGHPUT = """
SELECT COALESCE(SUM(cost), 0) AS cost, COALESCE(SUM(run_seconds), 0) AS seconds FROM (
    SELECT cost, run_seconds FROM jobs
    WHERE state = 'succeeded' AND run_seconds > 0
    ORDER BY finished_at DESC LIMIT 50
) recent
"""

BUSY_WORKERS = "SELECT COUNT(DISTINCT worker_id) AS n FROM jobs WHERE state IN ('leased', 'running')"
BUSY_WORKER_IDS = "SELECT DISTINCT worker_id FROM jobs WHERE state IN ('leased', 'running')"

# Before any job has finished, assume one SD 1.5 512x512 20-step image per 10 seconds.
DEFAULT_UNITS_PER_SECOND = 0.1


class _Retry(Exception):
    """Roll the claim's transaction back and try again."""


_AGAIN = object()


def _can_run(caps: Capabilities) -> tuple[str, list[Any]]:
    sql, params = "j.pixels <= ?", [caps.max_pixels if caps.max_pixels is not None else 2**31 - 1]
    if caps.models is not None:
        if not caps.models:
            return "1 = 0", []
        sql += " AND j.model IN (" + ", ".join("?" for _ in caps.models) + ")"
        params.extend(caps.models)
    if caps.max_images is not None:  # only remote workers set it; the default plan is unchanged
        sql += " AND j.image_count <= ?"
        params.append(caps.max_images)
    return sql, params


def _with_caps(sql: str, caps: Capabilities) -> tuple[str, list[Any]]:
    filter_sql, params = _can_run(caps)
    return sql.replace("{can_run}", filter_sql), params


def request_hash(request: GenerationRequest) -> str:
    return hashlib.sha256(request.model_dump_json().encode("utf-8")).hexdigest()


def _job(row: dict) -> Job:
    return Job(
        id=row["id"],
        user_id=int(row["user_id"]),
        state=JobState(row["state"]),
        request=GenerationRequest.model_validate_json(row["request"], context=STORED),
        model=row["model"],
        cost=float(row["cost"]),
        priority=int(row["priority"]),
        attempts=int(row["attempts"]),
        max_attempts=int(row["max_attempts"]),
        worker_id=row["worker_id"],
        lease_expires_at=row["lease_expires_at"],
        cancel_requested=bool(row["cancel_requested"]),
        progress_step=row["progress_step"],
        progress_total=row["progress_total"],
        seed=row["seed"],
        error=row["error"],
        idempotency_key=row["idempotency_key"],
        client_addr=row["client_addr"],
        created_at=float(row["created_at"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


JOB_EVENTS_AFTER = "SELECT id, job_id, kind, data, created_at FROM job_events WHERE job_id = ? AND id > ? ORDER BY id"


def _event(row: dict) -> JobEvent:
    return JobEvent(int(row["id"]), row["job_id"], row["kind"], json.loads(row["data"]), float(row["created_at"]))


def add_event(tx: Transaction, job_id: str, kind: str, data: dict[str, Any], now: float) -> None:
    """Callers hold the job's row lock (FOR UPDATE, an UPDATE of it, or its insert): one
    job's event ids then commit in id order, so a stream reading `id > last` (a resume with
    Last-Event-ID, on any server) never steps over an event that commits later."""
    tx.execute(*_event_statement(job_id, kind, data, now))


def _event_statement(job_id: str, kind: str, data: dict[str, Any], now: float) -> tuple[str, tuple]:
    """add_event's statement, for a batch that has taken the job's row lock before it."""
    return "INSERT INTO job_events (job_id, kind, data, created_at) VALUES (?, ?, ?, ?)", (job_id, kind, json.dumps(data), now)


class JobStore:
    """The queue. `clock` is injectable so that lease expiry is tested without sleeping."""

    def __init__(
        self,
        db: Database,
        images: ImageStore,
        *,
        lease_seconds: float = 30.0,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.time,
        ledger: Ledger | None = None,
        network_weight: float = 1.0,
        calibration_min_samples: int = 20,
    ) -> None:
        self.db = db
        # Samples a model needs on a worker class before its observed speed is used.
        self.calibration_min_samples = calibration_min_samples
        self.images = images
        # Generating spends credit, once, inside the transaction that completes the job.
        self.ledger = ledger if ledger is not None else Ledger(db, clock=clock)
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.clock = clock
        # What a network group weighs: what one registered person weighs.
        self.network_weight = network_weight

    # -- submit -------------------------------------------------------------------------

    def submit(self, new: NewJob, limits: QueueLimits | None = None) -> tuple[Job, bool]:
        """Queue a job; return it and whether it was created (False: idempotent replay).

        With `limits`, the queue caps are counted in the same transaction, after the user's
        row is locked, and QueueFull is raised with nothing queued when one would be broken.
        Committed before returning, so an answered submit survives a crash.
        """
        for _ in range(3):
            try:
                with self.db.transaction() as tx:
                    return self._submit(tx, new, limits)
            except self.db.integrity_errors:
                # Two submits raced on one idempotency key: the loser reads the winner's job.
                continue
        raise RuntimeError("could not submit the job after 3 tries")

    def submit_many(self, jobs: Sequence[NewJob]) -> list[Job]:
        """Queue many jobs in one transaction (seeding benchmarks and simulations)."""
        with self.db.transaction() as tx:
            return [self._submit(tx, new)[0] for new in jobs]

    def _submit(self, tx: Transaction, new: NewJob, limits: QueueLimits | None = None) -> tuple[Job, bool]:
        now = self.clock()
        digest = request_hash(new.request)
        if new.idempotency_key is not None:
            row = tx.one(
                f"SELECT {_JOB_COLUMNS}, request_hash FROM jobs "
                "WHERE user_id = ? AND idempotency_scope = ? AND idempotency_key = ?",
                (new.user_id, new.idempotency_scope, new.idempotency_key),
            )
            if row is not None:
                if row["request_hash"] != digest:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was already used with a different request; "
                        "use a new key for a new request"
                    )
                return _job(row), False
        # Everything that needs no lock is made first: the group's row, once locked, is held
        # until the commit, and every submit and claim of the group waits for it.
        job_id = uuid.uuid4().hex
        request_json = new.request.model_dump_json()
        batch_key = new.request.batch_key(new.model)
        event = _event_statement(job_id, "queued", {"attempts": 0}, now)
        if limits is not None:
            lock_shared_caps(tx, limits)
        # The locks and every read that the caps and the counters need: one round trip.
        placement = UserStore.place(tx, new.user_id, new.group or f"{OWN}:{new.user_id}",
                                    reads=count_reads if limits is not None else None)
        if limits is not None:
            # A replay (above) is answered whatever the caps; a new job must fit under them.
            hold_queue_limits(tx, placement, limits)
            # A job beyond the free tier must be covered by the balance, read after the row
            # lock: concurrent submits spend one balance one after another.
            hold_credit(tx, new.user_id, new.cost, limits, placement)
        group_id = placement.group_id
        InputStore(self.db, self.clock).put_many(tx, new.inputs)  # with the row: no job lacks an input
        # Then every write in a second round trip: the counters, the job, its reservation and
        # its event.
        writes = UserStore.enqueue_statements(tx, placement, new.cost, network_weight=self.network_weight)
        writes.append((
            "INSERT INTO jobs (id, user_id, client_addr, state, request, request_hash, idempotency_key, "
            "idempotency_scope, model, pixels, steps, image_count, cost, priority, max_attempts, created_at, "
            "batch_key, group_id, reserved) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"RETURNING {_JOB_COLUMNS}",
            (
                job_id, new.user_id, new.client_addr, request_json, digest,
                new.idempotency_key, new.idempotency_scope, new.model, new.request.width * new.request.height,
                new.request.steps, new.request.image_count, new.cost, new.priority,
                self.max_attempts, now, batch_key, group_id, max(0.0, new.cost),
            ),
        ))
        inserted = len(writes) - 1
        writes.append(event)
        if new.cost > 0:
            # The cost is held from the balance now, in the transaction that queues the job;
            # what the job does not generate comes back when it ends (_settle).
            writes += self.ledger.add_statements(new.user_id, -new.cost, SPEND_GENERATION, job_id=job_id)
        results = tx.batch(writes)
        if new.cost > 0:
            self.ledger.totals_written(tx, new.user_id, results[-1].one())
        row = results[inserted].one()
        assert row is not None
        return _job(row), True

    # -- claim --------------------------------------------------------------------------

    def claim(self, worker_id: str, caps: Capabilities = Capabilities()) -> Lease | None:
        """Lease the fair next job this worker can run, or None when there is none."""
        group_sql, group_params = _with_caps(SELECT_NEXT_GROUP, caps)
        return self._claim(worker_id, caps, group_sql, group_params)

    def claim_batch(
        self,
        worker_id: str,
        caps: Capabilities = Capabilities(),
        *,
        max_jobs: int = 1,
        prefer_model: str | None = None,
        slack: float = 0.0,
    ) -> list[Lease]:
        """Lease up to `max_jobs` jobs that can share one batch, fairly.

        `slack` is in job-times: how many of the fairest job's charges past the fairest group
        batching and affinity may reach (1: about one job-time of this worker; 0: never).

        - Affinity: with `prefer_model` (the model the worker has loaded), a job for it is
          taken first if its group's counter is within the bound; otherwise the fair choice,
          whatever its model.
        - Batching: then each further job is the next job, for the same model, of the fairest
          person of the fairest group within the bound of the first job's group whose next
          job has the same batch key. Nobody's own order changes.
        """
        first: Lease | None = None
        if prefer_model is not None and slack > 0 and (caps.models is None or prefer_model in caps.models):
            fairest = self._fairest(caps)
            if fairest is not None and fairest[1] != prefer_model:
                preferred = caps.model_copy(update={"models": (prefer_model,)})
                sql, params = _with_caps(SELECT_NEXT_GROUP_WITHIN, preferred)
                first = self._claim(worker_id, preferred, sql, [fairest[0] + slack * fairest[2], *params])
        if first is None:
            first = self.claim(worker_id, caps)
        if first is None:
            return []
        leases = [first]
        key = first.job.request.batch_key(first.job.model)
        if key is None or max_jobs <= 1 or slack <= 0:
            return leases
        with self.db.transaction() as tx:
            # the first group's counter before this claim charged it, and that charge
            row = tx.one(GROUP_COUNTER_BEFORE_CLAIM, (first.job.id,))
        if row is None:
            return leases
        bound = float(row["before"]) + slack * float(row["charge"])
        mates = caps.model_copy(update={"models": (first.job.model,)})
        head_sql, head_params = _with_caps(HEAD_BATCH_KEY, mates)
        person_sql, person_params = _with_caps(SELECT_GROUP_NEXT_USER, mates)
        while len(leases) < max_jobs:
            mate: tuple[int, int] | None = None
            with self.db.transaction() as tx:
                for row in tx.all(BATCH_CANDIDATES, (bound, 4 * max_jobs)):
                    person = tx.one(person_sql, [row["id"], *person_params])
                    if person is not None and tx.scalar(head_sql, [person["id"], *head_params]) == key:
                        mate = (int(row["id"]), int(person["id"]))
                        break
            if mate is None:
                break
            # Leased in its own transaction; on PostgreSQL another claimer may have taken that
            # head meanwhile, and the engine then runs a mismatched job alone (still correct).
            lease = self._claim(worker_id, mates, GROUP_BY_ID, [mate[0]], person=mate[1])
            if lease is None:
                break
            leases.append(lease)
        return leases

    def _fairest(self, caps: Capabilities) -> tuple[float, str, float] | None:
        """The fair choice without taking it: (its group's counter, its model, its charge to
        the group), the yardstick of claim_batch's slack."""
        group_sql, group_params = _with_caps(SELECT_NEXT_GROUP.replace("{lock_group_skip}", ""), caps)
        person_sql, person_params = _with_caps(SELECT_GROUP_NEXT_USER, caps)
        job_sql, job_params = _with_caps(SELECT_USER_NEXT_JOB.replace("{skip_locked}", ""), caps)
        with self.db.transaction(write=False) as tx:
            group = tx.one(group_sql, group_params)
            person = None if group is None else tx.one(person_sql, [group["id"], *person_params])
            job = None if person is None else tx.one(
                "SELECT model, cost FROM jobs WHERE seq = ?",
                (tx.scalar(job_sql, [person["id"], *job_params]),))
        if group is None or job is None:
            return None
        return (float(group["virtual_counter"]), job["model"],
                shares.charge(float(job["cost"]), float(group["weight"])))

    def _claim(
        self, worker_id: str, caps: Capabilities, group_sql: str, group_params: list[Any], *, person: int | None = None
    ) -> Lease | None:
        """Lease the next job of the group `group_sql` picks: of its fairest person, or of
        `person` (one transaction)."""
        person_sql, person_params = _with_caps(SELECT_GROUP_NEXT_USER, caps)
        job_sql, job_params = _with_caps(SELECT_USER_NEXT_JOB, caps)
        # A retry only happens on PostgreSQL, when a concurrent cancel or claim took the
        # job between our reads.
        for _ in range(5):
            try:
                lease = self._claim_once(worker_id, group_sql, group_params, person_sql, person_params,
                                         job_sql, job_params, person)
            except _Retry:
                continue
            if lease is not _AGAIN:
                return lease
        return None

    def _claim_once(
        self, worker_id: str, group_sql: str, group_params: list[Any], person_sql: str, person_params: list[Any],
        job_sql: str, job_params: list[Any], person: int | None,
    ) -> Any:
        """One try of `_claim`: a Lease, None (nothing to run) or _AGAIN (try again)."""
        # Not durable: a lease a crash loses leaves the job queued, as if never claimed,
        # and the worker's reports on it are refused (see Database.transaction).
        with self.db.transaction(durable=False) as tx:
            group = tx.one(group_sql, group_params)
            if group is None and self.db.dialect == "postgresql" and "{lock_group_skip}" in group_sql:
                # Every runnable group was skipped because a concurrent submit or claim
                # held its row (with one busy group, nearly always): wait for that lock
                # rather than tell the worker there is nothing to run. Groups are locked
                # before people everywhere, so waiting here cannot deadlock.
                group = tx.one(group_sql.replace("{lock_group_skip}", "{lock_group}"), group_params)
            if group is None:
                return None
            if person is None:
                user = tx.one(person_sql, [group["id"], *person_params])
            else:
                user = tx.one(PERSON_IN_GROUP, (person, group["id"]))
            if user is None:
                if person is not None:
                    return None
                return _AGAIN
            job = tx.one(job_sql, [user["id"], *job_params])
            if job is None:
                return _AGAIN
            now = self.clock()
            lease_id = uuid.uuid4().hex
            expires = now + self.lease_seconds
            cost = float(job["cost"])
            charged = shares.charge(cost, float(user["weight"]))
            group_charged = shares.charge(cost, float(group["weight"]))
            # The lease, its event and the charges in one round trip. The job's row is held
            # (SKIP LOCKED on PostgreSQL, the one writer on SQLite) and was queued, so the
            # lease takes; if it ever did not, _Retry rolls the charges back with it.
            results = tx.batch([
                (LEASE_JOB, (worker_id, lease_id, expires, now, charged, group_charged, job["seq"])),
                _event_statement(job["id"], "leased", {"worker": worker_id}, now),
                *UserStore.charge_statements(int(user["id"]), int(group["id"]), cost, charged, group_charged),
            ])
            row = results[0].one()
            if row is None:
                raise _Retry
            return Lease(job=_job(row), lease_id=lease_id, expires_at=expires)

    # -- reports from the worker --------------------------------------------------------

    def heartbeat(self, job_id: str, lease_id: str, progress: Progress | None = None) -> HeartbeatReply:
        """Extend the lease; the first heartbeat marks the job running.

        A `progress` with a step becomes a progress event; its preview (a small image as a
        data URL) rides on it.
        """
        progress = progress or Progress()
        step, total = progress.step, progress.total
        now = self.clock()
        held = (job_id, lease_id)
        # One round trip: the job's row locked, then writes that each do nothing unless the
        # lease still holds it. The first heartbeat marks the job running ("started").
        statements: list[tuple[str, Sequence[Any]]] = [
            ("SELECT state, cancel_requested FROM jobs WHERE id = ? AND lease_id = ? {for_update}", held),
            ("INSERT INTO job_events (job_id, kind, data, created_at) "
             "SELECT id, 'started', ?, ? FROM jobs WHERE id = ? AND lease_id = ? AND state = 'leased'",
             (json.dumps({}), now, *held)),
            ("UPDATE jobs SET lease_expires_at = ?, progress_step = COALESCE(?, progress_step), "
             "progress_total = COALESCE(?, progress_total), state = 'running', "
             "started_at = CASE WHEN state = 'leased' THEN ? ELSE started_at END "
             "WHERE id = ? AND lease_id = ? AND state IN ('leased', 'running')",
             (now + self.lease_seconds, step, total, now, *held)),
        ]
        if step is not None:
            data: dict[str, Any] = {"step": step, "total": total, "image_offset": progress.image_offset}
            if progress.preview is not None:
                data["preview"] = progress.preview
            statements.append((
                "INSERT INTO job_events (job_id, kind, data, created_at) "
                "SELECT id, 'progress', ?, ? FROM jobs WHERE id = ? AND lease_id = ? AND state = 'running'",
                (json.dumps(data), now, *held)))
        # Not durable: a heartbeat a crash loses only shortens the lease it extended.
        with self.db.transaction(durable=False) as tx:
            row = tx.batch(statements, last=True)[0].one()  # writes that need no decision: COMMIT with them
        if row is None or row["state"] not in (JobState.LEASED, JobState.RUNNING):
            return HeartbeatReply(ok=False, cancel_requested=True)
        return HeartbeatReply(ok=True, cancel_requested=bool(row["cancel_requested"]))

    def complete(
        self,
        job_id: str,
        lease_id: str,
        images: Sequence[PendingImage],
        *,
        seed: int | None = None,
        after: Callable[[Transaction], None] | None = None,
    ) -> bool:
        """Finish a job with its images. True for the one call that completed it.

        `after` runs inside the completing transaction, only for that one call (a remote
        worker's record and credit change with the completion, or not at all).
        """
        return self._finish(job_id, lease_id, JobState.SUCCEEDED, images=images, seed=seed, after=after)

    def fail(self, job_id: str, lease_id: str, reason: str) -> bool:
        return self._finish(job_id, lease_id, JobState.FAILED, error=reason)

    def acknowledge_cancel(
        self, job_id: str, lease_id: str, images: Sequence[PendingImage] = ()
    ) -> bool:
        """The worker stopped a cancelled job; images finished before the stop are kept."""
        return self._finish(job_id, lease_id, JobState.CANCELLED, images=images)

    def _finish(
        self,
        job_id: str,
        lease_id: str,
        state: JobState,
        *,
        images: Sequence[PendingImage] = (),
        seed: int | None = None,
        error: str | None = None,
        after: Callable[[Transaction], None] | None = None,
    ) -> bool:
        now = self.clock()
        finished = False
        try:
            with self.db.transaction() as tx:
                row = tx.one(HELD_JOB, (job_id, lease_id))
                if row is None:
                    return False  # the lease is lost: another report or the reaper won
                started = row["started_at"] or row["claimed_at"] or now
                run_seconds = max(0.0, now - started)
                data: dict[str, Any] = {}
                if state == JobState.SUCCEEDED:
                    data = {"image_ids": [i.id for i in images], "seed": seed}
                elif state == JobState.FAILED:
                    data = {"reason": error}
                else:
                    data = {"image_ids": [i.id for i in images]}
                # The job's row is held (HELD_JOB): its end, its images and its event in one
                # round trip.
                tx.batch([
                    ("UPDATE jobs SET state = ?, finished_at = ?, run_seconds = ?, seed = COALESCE(?, seed), "
                     "error = ?, lease_id = NULL, lease_expires_at = NULL WHERE id = ?",
                     (state.value, now, run_seconds, seed, error, job_id)),
                    *self.images.insert_statements(job_id, int(row["user_id"]), images),
                    _event_statement(job_id, state.value, data, now),
                ])
                self._spend(tx, job_id, row, state, len(images))
                if after is not None:
                    after(tx)
            finished = True  # committed
        finally:
            # The files were written before this transaction; no row names them unless it
            # committed the completion.
            if not finished:
                self.images.discard(images)
        if finished and state == JobState.SUCCEEDED:
            # Only whole runs calibrate: a cancelled or failed job stopped early. After the
            # completion's commit, in a short transaction of its own: every completion writes
            # the same row of model_speeds, which would otherwise stay locked through each
            # completion's commit and make completions run one at a time.
            self._record_speed(row, run_seconds, now)
        return finished

    def _record_speed(self, row: dict, run_seconds: float, now: float) -> None:
        try:
            speeds.record(self.db, row, run_seconds, now)
        except Exception:  # the job is complete; a lost sample only delays calibration
            log.warning("could not record the speed sample of job %s", row["id"], exc_info=True)

    def _spend(self, tx: Transaction, job_id: str, row: dict, state: JobState, delivered: int) -> None:
        # A cancelled job pays for the images it delivered; a failed one pays nothing.
        share = 1.0 if state == JobState.SUCCEEDED else 0.0
        if state == JobState.CANCELLED:
            share = min(1.0, delivered / max(1, int(row["image_count"])))
        self._settle(tx, job_id, row, share)

    def _settle(self, tx: Transaction, job_id: str, row: dict, share: float) -> None:
        """The job ended having generated `share` of its images: the reservation made at
        submit gives back the rest. A job accepted before reservations pays its share now."""
        if row.get("reserved") is None:
            cost = float(row["cost"]) * share
            if cost > 0:
                self.ledger.add(int(row["user_id"]), -cost, SPEND_GENERATION, job_id=job_id,
                                worker_id=row.get("worker_id"), conn=tx)
            return
        back = float(row["reserved"]) * (1.0 - share)
        if back > 0:
            self.ledger.add(int(row["user_id"]), back, REFUND, job_id=job_id, worker_id=row.get("worker_id"),
                            note=f"{1.0 - share:.0%} of the job was not generated", conn=tx)

    def extend_lease(self, job_id: str, lease_id: str, seconds: float) -> bool:
        """Hold a lease for `seconds` from now without a heartbeat: for workers whose protocol
        has none (the AI Horde's), the lease lasts as long as the Horde gives a job. Marks
        the job running, as a first heartbeat does. False on a lost lease."""
        now = self.clock()
        with self.db.transaction() as tx:
            row = tx.one("SELECT state FROM jobs WHERE id = ? AND lease_id = ? {for_update}", (job_id, lease_id))
            if row is None or row["state"] not in (JobState.LEASED, JobState.RUNNING):
                return False
            if row["state"] == JobState.LEASED:
                tx.run("UPDATE jobs SET state = 'running', started_at = ? WHERE id = ?", (now, job_id))
                add_event(tx, job_id, "started", {}, now)
            tx.run("UPDATE jobs SET lease_expires_at = ? WHERE id = ?", (now + seconds, job_id))
        return True

    def release(
        self, job_id: str, lease_id: str, *, count_attempt: bool = False, reason: str = "worker stopped"
    ) -> bool:
        """Give a job back untouched (worker shutting down): no attempt is counted.

        A remote worker's failure comes back with `count_attempt`: another worker retries it,
        and after max_attempts the job fails with `reason`.
        """
        with self.db.transaction() as tx:
            row = tx.one(HELD_JOB, (job_id, lease_id))
            if row is None:
                return False
            self._lost(tx, row, count_attempt=count_attempt, reason=reason)
            return True

    # -- leases -------------------------------------------------------------------------

    def expire_leases(self) -> int:
        """Return jobs whose lease ran out to the queue (or fail them after max_attempts)."""
        total = 0
        while True:
            with self.db.transaction() as tx:
                rows = tx.all(EXPIRED_LEASES, (self.clock(),))
                for row in rows:
                    self._lost(tx, row, count_attempt=True, reason="lease expired")
            total += len(rows)
            if len(rows) < 100:
                return total

    def recover_worker(self, worker_id: str) -> int:
        """At start: jobs this worker held before a crash are lost now, not at lease expiry."""
        with self.db.transaction() as tx:
            rows = tx.all(JOBS_OF_WORKER, (worker_id,))
            for row in rows:
                self._lost(tx, row, count_attempt=True, reason="worker restarted")
        return len(rows)

    def _lost(self, tx: Transaction, row: dict, *, count_attempt: bool, reason: str) -> None:
        now = self.clock()
        attempts = int(row["attempts"]) + (1 if count_attempt else 0)
        if row["cancel_requested"]:
            state, error = JobState.CANCELLED, None
        elif attempts >= int(row["max_attempts"]):
            state = JobState.FAILED
            error = f"{reason} {attempts} times; giving up (the job may crash its worker)"
        else:
            state, error = JobState.QUEUED, None
        tx.run(
            "UPDATE jobs SET state = ?, attempts = ?, error = ?, worker_id = NULL, lease_id = NULL, "
            "lease_expires_at = NULL, progress_step = NULL, progress_total = NULL, started_at = NULL, "
            "charged = 0, group_charged = 0, finished_at = ? WHERE seq = ?",
            (state.value, attempts, error, None if state == JobState.QUEUED else now, row["seq"]),
        )
        if state == JobState.QUEUED:
            group_id = UserStore.refund(
                tx, int(row["user_id"]), None if row["group_id"] is None else int(row["group_id"]),
                float(row["cost"]), float(row["charged"]), float(row["group_charged"]))
            tx.run("UPDATE jobs SET group_id = ? WHERE seq = ?", (group_id, row["seq"]))
            add_event(tx, row["id"], "queued", {"attempts": attempts, "reason": reason}, now)
        elif state == JobState.FAILED:
            self._settle(tx, row["id"], row, 0.0)
            add_event(tx, row["id"], "failed", {"reason": error}, now)
        else:
            self._settle(tx, row["id"], row, 0.0)
            add_event(tx, row["id"], "cancelled", {"image_ids": []}, now)

    # -- owner actions ------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job | None:
        """Cancel in any state: queued stops now, leased/running at the worker's next step,
        finished jobs stay as they are."""
        now = self.clock()
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT seq, user_id, group_id, state, cost, reserved FROM jobs WHERE id = ? {for_update}", (job_id,)
            )
            if row is None:
                return None
            if row["state"] == JobState.QUEUED:
                tx.run(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ? WHERE seq = ?",
                    (now, row["seq"]),
                )
                UserStore.dequeue(tx, int(row["user_id"]), int(row["group_id"]), float(row["cost"]))
                self._settle(tx, job_id, row, 0.0)
                add_event(tx, job_id, "cancelled", {"image_ids": []}, now)
            elif row["state"] in (JobState.LEASED, JobState.RUNNING):
                tx.run("UPDATE jobs SET cancel_requested = 1 WHERE seq = ?", (row["seq"],))
            found = tx.one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE seq = ?", (row["seq"],))
        assert found is not None
        return _job(found)

    # -- reads --------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self.db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else _job(row)

    def for_user(self, user_id: int, *, client_addr: str | None = None, limit: int = 100) -> list[Job]:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE user_id = ?"
        params: list[Any] = [user_id]
        if client_addr is not None:
            sql += " AND client_addr = ?"
            params.append(client_addr)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        with self.db.transaction(write=False) as tx:
            return [_job(r) for r in tx.all(sql, params)]

    def events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        with self.db.transaction(write=False) as tx:
            return [_event(r) for r in tx.all(JOB_EVENTS_AFTER, (job_id, after))]

    def place(self, job_id: str) -> tuple[shares.Place, float] | None:
        """Jobs (and units) ahead of a queued job under fair sharing, and its ETA in seconds.

        A leased or running job has nothing ahead; its ETA is its remaining work.
        """
        with self.db.transaction(write=False) as tx:
            row = tx.one("SELECT seq, user_id, group_id, state, priority, cost, progress_step, progress_total "
                         "FROM jobs WHERE id = ?", (job_id,))
            if row is None or row["state"] in TERMINAL_STATES:
                return None
            queued = row["state"] == JobState.QUEUED
            # Every further read in one round trip.
            reads: list[tuple[str, Sequence[Any]]] = [(RECENT_THROUGHPUT, ()), (BUSY_WORKERS, ()),
                                                      (speeds.OBSERVED, ()), (BUSY_WORKER_IDS, ())]
            if queued:
                reads += [
                    ("SELECT virtual_counter, weight, group_id, queued_jobs FROM users WHERE id = ?", (row["user_id"],)),
                    ("SELECT id, virtual_counter, weight, queued_jobs FROM fair_groups WHERE id = ?", (row["group_id"],)),
                    (OWN_AHEAD, (row["user_id"], row["priority"], row["priority"], row["seq"])),
                    (GROUP_BACKLOGS, ()),
                    (MEMBER_BACKLOGS, (row["group_id"],)),
                ]
            results = tx.batch(reads)
            rate = results[0].one()
            workers = int(results[1].scalar() or 0)
            observed_rate = self._observed_rate(tx, results[2].rows, results[3].rows)
            cost = float(row["cost"])
            if not queued:
                place = shares.Place(0, 0.0)
                done = (row["progress_step"] or 0) / (row["progress_total"] or 1)
                cost *= max(0.0, 1.0 - done)
            else:
                user, group, own = results[4].one(), results[5].one(), results[6].one()
                assert user is not None and group is not None
                assert own is not None

                def backlogs(found: list[dict]) -> list[shares.Backlog]:
                    return [shares.Backlog(int(b["id"]), float(b["virtual_counter"]), float(b["weight"]),
                                           int(b["queued_jobs"]), float(b["queued_cost"])) for b in found]

                place = shares.place_in_hierarchy(
                    shares.Standing(int(group["id"]), float(group["virtual_counter"]), float(group["weight"]),
                                    int(group["queued_jobs"])),
                    shares.Standing(int(row["user_id"]), float(user["virtual_counter"]), float(user["weight"]),
                                    int(user["queued_jobs"])),
                    int(own["n"]), float(own["cost"]),
                    groups=backlogs(results[7].rows), members=backlogs(results[8].rows),
                )
        assert rate is not None
        if observed_rate is not None:
            units_per_second = observed_rate
        elif rate["seconds"]:
            units_per_second = float(rate["cost"]) / float(rate["seconds"])
        else:
            units_per_second = DEFAULT_UNITS_PER_SECOND
        return place, shares.eta_seconds(place.cost_ahead, cost, units_per_second, workers)

    def _observed_rate(self, tx: Transaction, observed: list[dict], busy_ids: list[dict]) -> float | None:
        """Units a second one worker runs, from the reference model's observed seconds per
        unit (the figures the calibrated cost factors use, so a unit of any model takes that
        long): over the classes of the workers busy now, else the fastest class observed.
        None before the reference has enough samples anywhere. `observed` and `busy_ids`:
        the rows of speeds.OBSERVED and BUSY_WORKER_IDS."""
        refs = cost_rule.reference_speeds(speeds.observed_from(observed), self.calibration_min_samples)
        if not refs:
            return None
        busy = {speeds.worker_class(tx, r["worker_id"]) for r in busy_ids}
        known = [refs[c] for c in busy if c in refs]
        seconds = sum(known) / len(known) if known else min(refs.values())
        return 1.0 / seconds if seconds > 0 else None


# The jobs of an older schema, oldest first: their inline images move to input_images.
_LEGACY_JOBS = """
SELECT seq, request FROM jobs
WHERE seq > ? AND (request NOT LIKE '%"init_images":[]%' OR request NOT LIKE '%"mask":null%')
ORDER BY seq LIMIT 50
"""


def move_inline_inputs(db: Database, tx: Transaction) -> None:
    """Migration step after 0005: move the inline images of jobs queued before it into
    input_images, so that those jobs too are read without decoding. The idempotency hash
    follows the request, so a replayed submission of such a job still matches it."""
    inputs = InputStore(db)
    last = 0
    while rows := tx.all(_LEGACY_JOBS, (last,)):
        for row in rows:
            last = int(row["seq"])
            try:
                request = GenerationRequest.model_validate_json(row["request"], context=STORED)
            except ValueError:  # a row no request validates as: left as it is, not lost
                continue
            stored, files = request.stored_form()
            if not files:
                continue
            inputs.put_many(tx, files.values())
            tx.execute(
                "UPDATE jobs SET request = ?, request_hash = ? WHERE seq = ?",
                (stored.model_dump_json(), request_hash(stored), last),
            )
