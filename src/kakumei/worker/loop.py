"""The worker loop: claim -> engine -> report, with lease heartbeats while a job runs.

The engine is anything with `generate(request, on_step=, cancelled=)` as in
kakumei.engine.pipeline.Engine; this module does not import torch.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import ValidationError

from kakumei.errors import GenerationCancelled, KakumeiError
from kakumei.protocol import (
    MAX_REASON,
    Capabilities,
    ImageReport,
    JobSource,
    LeasedJob,
    Progress,
)
from kakumei.schemas import validation_message

log = logging.getLogger(__name__)

# A reason is stored as text and shown to the job's owner: no control characters (PostgreSQL
# stores no NUL in text), and no longer than a server keeps.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def failure_reason(text: str) -> str:
    """`text` as a failure reason a source accepts: control characters shown as escapes, cut
    to MAX_REASON characters."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)[:MAX_REASON]


# Compatible jobs a worker runs as one batch when it is not told how many (worker_batch_jobs
# "auto", `kakumei worker` without --batch-jobs). A CPU is already busy with one job: a batch
# of four gained 1.2x throughput at 512x512 (1.5x at 256x256) but made each job's mean latency
# 3.3x (2.6x), every job waiting for the whole batch (benchmarks/batching.py), so it runs one at
# a time. A GPU runs a batch of four in little more time than one job.
CPU_BATCH_JOBS = 1
GPU_BATCH_JOBS = 4


def batch_jobs_for(device_type: str | None, setting: int | None = None) -> int:
    """How many jobs to batch: `setting` when one is given, else by the device the engine
    runs on ("cuda", "mps", "cpu"; None when unknown counts as a CPU)."""
    if setting is not None:
        return setting
    return GPU_BATCH_JOBS if device_type in ("cuda", "mps") else CPU_BATCH_JOBS


def engine_device_type(engine: Any) -> str | None:
    """The device type ("cuda", "mps", "cpu") of an engine with a torch `device`, else None."""
    device = getattr(engine, "device", None)
    return getattr(device, "type", None) if device is not None else None


class GenerationEngine(Protocol):
    def generate(self, request: Any, on_step: Any = None, cancelled: Any = None) -> Any: ...


def preview_data_url(image: Any, max_side: int = 128) -> str:
    """A PIL image as a small PNG data URL, for progress events."""
    image = image.copy()
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class _JobRun:
    """State of one running job, shared by the engine callbacks and the keep-alive thread."""

    def __init__(self, source: JobSource, lease: LeasedJob, stop: threading.Event) -> None:
        self.source = source
        self.lease = lease
        self.stop = stop
        self.cancel_requested = False
        self.acknowledged = False  # cancel already reported (a batch mate's cancel)
        self.lease_lost = False
        self.last_report = 0.0
        self._lock = threading.Lock()

    def beat(self, progress: Progress | None = None) -> None:
        with self._lock:
            reply = self.source.heartbeat(self.lease.job_id, self.lease.lease_id, progress)
            self.last_report = time.monotonic()
        if not reply.ok:
            self.lease_lost = True
        if reply.cancel_requested:
            self.cancel_requested = True

    def should_stop(self) -> bool:
        return self.cancel_requested or self.lease_lost or self.stop.is_set()


class Worker:
    """Runs jobs from `source` on `engine` until `stop` is set."""

    def __init__(
        self,
        source: JobSource,
        engine: GenerationEngine,
        worker_id: str,
        *,
        capabilities: Capabilities = Capabilities(),
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.25,
        preview_every: int = 5,
        progress_interval: float = 0.25,
        max_batch_jobs: int = 1,
        fairness_slack: float = 0.0,
    ) -> None:
        self.source = source
        self.engine = engine
        self.worker_id = worker_id
        self.capabilities = capabilities
        # Three heartbeats per lease: one lost or late beat does not cost the job.
        self.keepalive_seconds = lease_seconds / 3
        self.poll_seconds = poll_seconds
        self.preview_every = preview_every
        self.progress_interval = progress_interval
        self.max_batch_jobs = max_batch_jobs
        self.fairness_slack = fairness_slack
        # While a claimed job runs (Ctrl-C says whether one goes back), and since when: the
        # one line logged per job says how long it took.
        self.busy = False
        self._started = 0.0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self.run_one(stop):
                    stop.wait(self.poll_seconds)
            except Exception:  # the store being briefly unreachable must not end the worker
                log.exception("worker %s: error between jobs; retrying", self.worker_id)
                stop.wait(max(1.0, self.poll_seconds))

    def run_one(self, stop: threading.Event | None = None) -> bool:
        """Claim and run one job (or one batch of compatible jobs). False when there was
        nothing to claim."""
        stop = stop or threading.Event()
        leases = self._claim()
        if not leases:
            # Idle: a trusted remote worker checks another worker's result instead.
            return self._check_one()
        self.busy, self._started = True, time.monotonic()
        try:
            if len(leases) == 1:
                self._run(leases[0], stop)
            else:
                self._run_batch(leases, stop)
        finally:
            self.busy = False
        return True

    def _check_one(self) -> bool:
        """Re-run one result the server wants checked, if the source offers checks (a remote
        server, to a trusted worker) and one waits. False when none did."""
        claim_check = getattr(self.source, "claim_check", None)
        if claim_check is None:
            return False
        task = claim_check(self.capabilities)
        if task is None:
            return False
        started = time.monotonic()
        try:
            result = self.engine.generate(task.request_to_run())
            images = [self._image(image) for image in result.images]
        except Exception as exc:  # the server hands the check to someone else at our next claim
            log.warning("check %d: could not re-run the job: %s", task.check_id, _describe(exc))
            return False
        self.source.report_check(task.check_id, images)  # type: ignore[attr-defined]
        log.info("checked another worker's job (%d images) in %.1f s", len(images), time.monotonic() - started)
        return True

    def _claim(self) -> list[LeasedJob]:
        claim_batch = getattr(self.source, "claim_batch", None)
        loaded = getattr(self.engine, "loaded_model_refs", None)
        if claim_batch is None or (self.max_batch_jobs <= 1 and loaded is None):
            lease = self.source.claim(self.worker_id, self.capabilities)
            return [] if lease is None else [lease]
        refs = loaded() if loaded is not None else []
        # Batching needs the engine's generate_batch; affinity only the loaded model's name.
        max_jobs = self.max_batch_jobs if hasattr(self.engine, "generate_batch") else 1
        return claim_batch(
            self.worker_id,
            self.capabilities,
            max_jobs=max_jobs,
            prefer_model=refs[-1] if refs else None,
            slack=self.fairness_slack,
        )

    def _run_batch(self, leases: list[LeasedJob], stop: threading.Event) -> None:
        """Compatible jobs of several users as one engine batch; each job is still reported,
        cancelled and failed on its own."""
        runs = [_JobRun(self.source, lease, stop) for lease in leases]
        for run in runs:
            run.beat()
        done = threading.Event()
        keepalives = [threading.Thread(target=self._keepalive, args=(run, done), daemon=True) for run in runs]
        for thread in keepalives:
            thread.start()
        requests = [lease.request_to_run() for lease in leases]
        try:
            results = self.engine.generate_batch(  # type: ignore[attr-defined]
                requests,
                on_step=lambda p: self._on_batch_step(runs, p),
                # the batch stops only when no job in it wants its image any more
                cancelled=lambda: all(run.should_stop() for run in runs),
            )
        except GenerationCancelled:
            for run in runs:
                if not run.acknowledged:
                    self._stopped(run, [])
            return
        except Exception:  # e.g. one bad request: run each job alone, so only it fails
            log.warning("batch of %d jobs failed; running them one by one", len(runs), exc_info=True)
            done.set()
            for run in runs:
                if not (run.acknowledged or run.lease_lost):
                    self._run(run.lease, stop)
            return
        finally:
            done.set()
            for thread in keepalives:
                thread.join()
        for run, result in zip(runs, results):
            if run.acknowledged or run.lease_lost:
                continue
            self._deliver(run.lease, result.images, result.seed, cancelled=run.cancel_requested)

    def _on_batch_step(self, runs: list[_JobRun], progress: Any) -> None:
        for run in runs:
            if run.acknowledged or run.lease_lost:
                continue
            if run.cancel_requested:
                # Cancelled while its batch mates go on: the job ends now, its image is dropped.
                self.source.acknowledge_cancel(run.lease.job_id, run.lease.lease_id, [])
                run.acknowledged = True
                continue
            self._on_step(run, progress)

    def _run(self, lease: LeasedJob, stop: threading.Event) -> None:
        job_id = lease.job_id
        run = _JobRun(self.source, lease, stop)
        run.beat()  # leased -> running, and the "started" event
        done = threading.Event()
        keepalive = threading.Thread(target=self._keepalive, args=(run, done), daemon=True)
        keepalive.start()
        try:
            result = self.engine.generate(
                lease.request_to_run(), on_step=lambda p: self._on_step(run, p), cancelled=run.should_stop
            )
        except GenerationCancelled as exc:
            done.set()
            self._stopped(run, exc.images)
            return
        except KakumeiError as exc:
            done.set()
            self._fail(lease, str(exc))
            return
        except Exception as exc:  # a crash in one job fails that job, not the worker
            done.set()
            log.exception("job %s failed", job_id)
            self._fail(lease, f"internal error: {type(exc).__name__}: {exc}")
            return
        finally:
            done.set()
            keepalive.join()
        self._deliver(lease, result.images, result.seed, cancelled=False)

    def _deliver(self, lease: LeasedJob, generated: Sequence[Any], seed: int | None, *, cancelled: bool) -> None:
        """Report a job's images: completed, or acknowledged as cancelled. When they cannot be
        reported (an image the store refuses), that job fails with the reason at once; its
        batch mates are reported on their own, and no lease is left to run out and retry."""
        job_id, lease_id = lease.job_id, lease.lease_id
        try:
            images = [self._image(i) for i in generated]
            if cancelled:
                self.source.acknowledge_cancel(job_id, lease_id, images)
                log.info("job %s: cancelled, %d image(s) kept", job_id, len(images))
            elif not self.source.complete(job_id, lease_id, images, seed):
                log.warning("job %s: finished after its lease was lost; result dropped", job_id)
            else:
                log.info("job %s: %s", job_id, _summary(lease, len(images), time.monotonic() - self._started))
        except Exception as exc:
            log.exception("job %s: its images could not be stored", job_id)
            if cancelled:  # the owner asked it to stop: it ends cancelled, without the images
                self._acknowledge(lease)
            else:
                self._fail(lease, f"its images could not be stored: {_describe(exc)}")

    def _fail(self, lease: LeasedJob, reason: str) -> None:
        log.info("job %s: failed: %s", lease.job_id, reason)
        try:
            self.source.fail(lease.job_id, lease.lease_id, failure_reason(reason))
        except Exception:  # e.g. the store is away: the lease runs out and the job is retried
            log.exception("job %s: its failure could not be reported", lease.job_id)

    def _acknowledge(self, lease: LeasedJob) -> None:
        try:
            self.source.acknowledge_cancel(lease.job_id, lease.lease_id, [])
        except Exception:
            log.exception("job %s: its cancel could not be reported", lease.job_id)

    def _stopped(self, run: _JobRun, generated: Sequence[Any]) -> None:
        job_id, lease_id = run.lease.job_id, run.lease.lease_id
        if run.lease_lost:
            return
        if run.cancel_requested:
            self._deliver(run.lease, generated, None, cancelled=True)
        else:  # shutting down: someone else (or this server after restart) runs it
            self.source.release(job_id, lease_id)

    def _keepalive(self, run: _JobRun, done: threading.Event) -> None:
        while not done.wait(self.keepalive_seconds / 4):
            if time.monotonic() - run.last_report >= self.keepalive_seconds:
                try:
                    run.beat()
                except Exception:
                    log.exception("heartbeat for job %s failed", run.lease.job_id)

    def _on_step(self, run: _JobRun, progress: Any) -> None:
        step, total = progress.step, progress.total
        with_preview = step % self.preview_every == 0 or step == total
        due = time.monotonic() - run.last_report >= self.progress_interval
        if not (step == 1 or with_preview or due):
            return
        preview = None
        if with_preview:
            image = progress.preview()
            preview = None if image is None else preview_data_url(image)
        run.beat(Progress(step=step, total=total, image_offset=progress.image_offset, preview=preview))

    @staticmethod
    def _image(image: Any) -> ImageReport:
        # Raises ValueError for an image the protocol refuses (a control character in the
        # infotext of a prompt queued by an earlier version).
        return ImageReport.of_png(
            image.png, seed=image.seed, index=image.index, infotext=image.infotext, metadata=image.metadata
        )


def _describe(exc: Exception) -> str:
    """An exception as the end of a sentence: pydantic's errors as one line each."""
    if isinstance(exc, ValidationError):
        return validation_message(exc)
    return f"{type(exc).__name__}: {exc}"


def _summary(lease: LeasedJob, images: int, seconds: float) -> str:
    """What a finished job was, in one line: "2 image(s) 512x512, 20 steps of model in 4.1 s"."""
    r = lease.request
    mode = "" if r.mode == "txt2img" else f" {r.mode}"
    return f"{images} image(s){mode} {r.width}x{r.height}, {r.steps} steps of {lease.model} in {seconds:.1f} s"
