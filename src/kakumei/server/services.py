"""What the routes and background threads of one server share, opened once per app."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Literal

from kakumei.config import Settings
from kakumei.errors import ConfigError
from kakumei.fairness.cost import calibrated_factors
from kakumei.server.passwords import Passwords
from kakumei.store.accounts import AccountStore, KeyUse
from kakumei.store.db import Database, redact
from kakumei.store.horde import HordeStore
from kakumei.store.images import ORPHAN_GRACE_SECONDS, ImageStore
from kakumei.store.jobs import JobStore
from kakumei.store.ledger import Ledger
from kakumei.store.migrate import migrate
from kakumei.store.moderation import Moderation
from kakumei.store.notify import JobChanges
from kakumei.store.speeds import observed
from kakumei.store.users import UserStore
from kakumei.store.workers import TrustPolicy, WorkerStore

# How far back the first pass after a start looks for orphaned image chunks, and how often
# the passes after it run (each looks only at what was written since the last).
ORPHAN_LOOKBACK_SECONDS = 7 * 24 * 3600.0
ORPHAN_PASS_SECONDS = 600.0

log = logging.getLogger(__name__)


def image_store_kind(settings: Settings, db: Database) -> Literal["files", "database", "s3"]:
    """Where new images go: `image_store`, with "auto" the bucket when one is set, else the
    database on PostgreSQL (every server sharing it must reach every image) and files on SQLite
    (one machine)."""
    if settings.image_store == "auto":
        if settings.s3_bucket:
            return "s3"
        return "database" if db.dialect == "postgresql" else "files"
    if settings.image_store == "s3" and not settings.s3_bucket:
        raise ConfigError("image_store is s3 but no bucket is set: set s3_bucket (KAKUMEI_S3_BUCKET)")
    return settings.image_store


def open_bucket(settings: Settings, db: Database) -> None:
    """Attach the bucket of `s3_bucket` to `db` (rows naming "s3:" keys are read from it);
    boto3 is imported only here. A bucket that does not answer stops the server starting."""
    if not settings.s3_bucket:
        return
    from kakumei.store.objects import Bucket

    bucket = Bucket(settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                    access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key)
    try:
        bucket.check()
    except Exception as exc:
        raise ConfigError(f"cannot use the bucket {settings.s3_bucket!r} (s3_bucket): {exc}") from None
    db.objects = bucket


def local_worker_id(settings: Settings) -> str:
    """Stable across restarts of the same server, distinct between servers sharing a database,
    so that at start a server recovers exactly the jobs its own worker held."""
    home = hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:8]
    return f"local@{socket.gethostname()}:{home}"


@dataclass
class Services:
    settings: Settings
    db: Database
    users: UserStore
    jobs: JobStore
    images: ImageStore
    engine: Any | None
    workers: WorkerStore
    threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    # Merit and admission, built from the others in __post_init__. Credit users
    # through `ledger`: it carries the server's merit policy.
    ledger: Ledger = field(init=False)
    moderation: Moderation = field(init=False)
    admission: Any = field(init=False)  # server.admission.Admission
    # Sign-up, sign-in, guests and keys (server/signup.py).
    accounts: AccountStore = field(init=False)
    passwords: Passwords = field(init=False)
    key_use: KeyUse = field(init=False)
    # New job events announced by the database (PostgreSQL), for the event streams.
    job_changes: JobChanges = field(init=False)
    # Rate limits, offences and timeouts in Redis (store/redis_limits.py RedisLimits) when
    # the setting `redis_url` is set; None: in the database (and buckets in memory on SQLite).
    limits: Any = None

    def __post_init__(self) -> None:
        from kakumei.server.admission import Admission

        self.accounts = AccountStore(self.db)
        self.horde = HordeStore(self.db)
        self.passwords = Passwords()
        self.key_use = KeyUse(self.accounts)
        self.ledger = self.jobs.ledger
        if self.limits is None and self.settings.redis_url:
            from kakumei.store.redis_limits import RedisLimits  # redis is imported only here

            self.limits = RedisLimits(self.settings.redis_url, self.settings.redis_prefix)
            try:
                self.limits.ping()  # limits that would not hold are no reason to serve
            except Exception as exc:
                self.limits.close()
                raise ConfigError(f"cannot reach Redis at {redact(self.settings.redis_url)} (redis_url): {exc}") from None
        self.moderation = Moderation(self.db, offences=self.limits)
        self.admission = Admission(self.settings, self.db, self.jobs, self.moderation, limits=self.limits)
        self.job_changes = JobChanges(self.db)

    @classmethod
    def open(cls, settings: Settings, engine: Any | None) -> Services:
        db = Database(settings.database_url)
        try:
            open_bucket(settings, db)
            migrate(db)
            images = ImageStore(db, settings.home / "images", image_store_kind(settings, db))
            from kakumei.server.admission import merit_policy

            jobs = JobStore(
                db, images, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
                ledger=Ledger(db, merit_policy(settings)),
                calibration_min_samples=settings.cost_calibration_min_samples,
            )
            policy = TrustPolicy(
                sample_rate=settings.verify_sample_rate,
                trusted_sample_rate=settings.verify_sample_rate / 10,
                trust_after=settings.verify_trust_after,
                quarantine_after=settings.verify_quarantine_after,
                check_first=settings.verify_check_first,
                max_keys_per_user=settings.worker_keys_per_user,
                max_new_per_network_day=settings.worker_keys_per_network_day,
            )
            workers = WorkerStore(db, policy, ledger=jobs.ledger)  # the server's merit policy
            return cls(settings, db, UserStore(db), jobs, images, engine, workers=workers)
        except BaseException:
            # a refused start (no bucket, no Redis, a bad image_store) keeps no connection open
            db.close()
            raise

    def cost_factor(self) -> Callable[[str], float]:
        """The per-model cost factors now: the fixed ones, calibrated from the observed run
        seconds once there are enough (fairness/cost.py calibrated_factor)."""
        return calibrated_factors(observed(self.db), min_samples=self.settings.cost_calibration_min_samples,
                                  clamp=self.settings.cost_calibration_clamp)

    def known_models(self) -> list[str]:
        """Models a job may name: the configured default plus what the engine has loaded."""
        if self.engine is not None and hasattr(self.engine, "model_names"):
            names = list(self.engine.model_names())
        else:
            names = []
        return list(dict.fromkeys([self.settings.model, *names]))

    def local_worker_running(self) -> bool:
        return any(t.name == "local-worker" and t.is_alive() for t in self.threads)

    def start(self, local_worker: bool) -> None:
        """Recover, then start the lease reaper and (optionally) the local worker."""
        # The merit settings may have changed since the weights were last written.
        self.ledger.refresh_weights()
        if local_worker:
            recovered = self.jobs.recover_worker(local_worker_id(self.settings))
            if recovered:
                log.info("requeued %d job(s) the local worker held before a restart", recovered)
            self.workers.recover_verifier(local_worker_id(self.settings))
        self.jobs.expire_leases()
        if self.images.where != "files":
            # Files of this server's data folder (and, into a bucket, chunks in the database)
            # move to where new images go, so that every server can serve them.
            self.images.move_files_in()
        self.job_changes.start()
        self._spawn("lease-reaper", self._reap)
        if local_worker:
            self._spawn("local-worker", self._work)

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _reap(self) -> None:
        # Image chunks no row names: first those of the last ORPHAN_LOOKBACK_SECONDS (a server
        # killed mid-write before this one started), then every ORPHAN_PASS_SECONDS those
        # written since the last pass (store/images.py collect_orphans).
        orphans_since = time.time() - ORPHAN_LOOKBACK_SECONDS
        next_orphan_pass = 0.0
        while True:
            if time.monotonic() >= next_orphan_pass:
                now = time.time()
                try:
                    self.images.collect_orphans(orphans_since, now=now)
                    orphans_since = now - ORPHAN_GRACE_SECONDS
                except Exception:
                    log.exception("collecting orphaned image chunks failed; retrying later")
                next_orphan_pass = time.monotonic() + ORPHAN_PASS_SECONDS
            if self.stop.wait(self.settings.lease_seconds / 3):
                return
            try:
                self.jobs.expire_leases()
            except Exception:
                log.exception("expiring leases failed; retrying")

    def local_worker(self) -> Any:
        """The in-process worker (kakumei.worker.Worker) on this server's engine, loading the
        engine first if none was given. Its batch size is `worker_batch_jobs`, or with "auto"
        the one for the engine's device."""
        from kakumei.server.job_source import StoreJobSource
        from kakumei.worker import Worker
        from kakumei.worker.loop import batch_jobs_for, engine_device_type

        if self.engine is None:
            from kakumei.engine.pipeline import Engine

            self.engine = Engine(self.settings)
        return Worker(
            StoreJobSource(self.jobs, self.images),
            self.engine,
            local_worker_id(self.settings),
            lease_seconds=self.settings.lease_seconds,
            max_batch_jobs=batch_jobs_for(engine_device_type(self.engine), self.settings.worker_batch_jobs),
            fairness_slack=self.settings.fairness_slack,
        )

    def _work(self) -> None:
        from kakumei.server.verification import Verifier

        worker = self.local_worker()
        log.info("local worker: up to %d job(s) per batch%s", worker.max_batch_jobs,
                 "" if self.settings.worker_batch_jobs else " (worker_batch_jobs auto, by the engine's device)")
        verifier = Verifier(
            self.workers, self.jobs, self.images, self.engine, local_worker_id(self.settings),
            max_distance=self.settings.verify_max_distance,
        )
        # The local worker is the trusted one: checking remote workers' results comes first,
        # since their owners' credit waits on it.
        while not self.stop.is_set():
            try:
                if not verifier.run_one() and not worker.run_one(self.stop):
                    self.stop.wait(worker.poll_seconds)
            except Exception:  # the database being briefly away must not end the worker
                log.exception("local worker: error between jobs; retrying")
                self.stop.wait(1.0)

    def close(self) -> None:
        self.stop.set()
        self.job_changes.stop()
        for thread in self.threads:
            thread.join(timeout=60)
        if self.limits is not None:
            self.limits.close()
        self.db.close()
