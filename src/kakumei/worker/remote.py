"""`JobSource` over HTTP: a volunteer's worker talking to a server's /api/v1/worker/.

Outbound requests only, so a machine behind a home router can lend its GPU. When the server
is away, calls back off (1 s doubling to 60 s) instead of failing the worker; a result keeps
being retried for as long as its lease could still be alive, and after that the server would
refuse it anyway (409: the job went back to the queue).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from pydantic import BaseModel

from kakumei.errors import KakumeiError
from kakumei.protocol import (
    MAX_REASON,
    BatchClaim,
    Capabilities,
    CheckReport,
    CheckTask,
    FailureReport,
    HeartbeatReply,
    HeartbeatReport,
    ImageReport,
    ImagesReport,
    Lease,
    LeasedJob,
    LeasedJobs,
    Progress,
)
from kakumei.schemas import STORED

log = logging.getLogger(__name__)

API = "/api/v1/worker"
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class WorkerRefused(KakumeiError):
    """The server will not let this worker work (bad key, user key, quarantined)."""


class ServerAway(Exception):
    """No answer from the server, or a 5xx: worth retrying later."""


class HttpJobSource:
    """The worker protocol against `server` with `key` (a worker key)."""

    def __init__(
        self,
        server: str,
        key: str,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.client = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "kakumei-worker"},
            timeout=timeout,
            transport=transport,
        )
        # Set on shutdown: backoff waits end at once instead of sleeping out up to a minute.
        self.stopping = threading.Event()
        self.sleep = sleep or self.stopping.wait
        self.lease_seconds = 30.0
        self.backoff = 0.0  # seconds to wait before the next claim; 0 while the server answers
        # One request at a time: the keep-alive thread and the engine's progress share it.
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    # -- transport ----------------------------------------------------------------------

    def _call(self, method: str, path: str, body: BaseModel | None = None) -> httpx.Response:
        json = None if body is None else body.model_dump(mode="json")
        try:
            with self._lock:
                reply = self.client.request(method, API + path, json=json)
        except httpx.TransportError as exc:
            raise ServerAway(f"{self.server} unreachable: {exc}") from None
        if reply.status_code >= 500:
            raise ServerAway(f"{self.server} answered {reply.status_code}")
        if reply.status_code in (401, 403):
            raise WorkerRefused(f"the server refused this worker: {_detail(reply)}")
        return reply

    def _retrying(self, method: str, path: str, body: BaseModel, *, for_seconds: float) -> httpx.Response | None:
        """`_call`, retried with backoff while the server is away, for up to `for_seconds`."""
        deadline = time.monotonic() + for_seconds
        wait = FIRST_BACKOFF
        while True:
            try:
                return self._call(method, path, body)
            except ServerAway as exc:
                if time.monotonic() + wait > deadline:
                    log.warning("%s; giving up on %s", exc, path)
                    return None
                log.warning("%s; retrying in %.0f s", exc, wait)
                self.sleep(wait)
                wait = min(wait * 2, MAX_BACKOFF)

    # -- the protocol -------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """Check the key and learn the lease time, waiting (with backoff) for the server."""
        wait = FIRST_BACKOFF
        while True:
            try:
                reply = self._call("GET", "/me")
                break
            except ServerAway as exc:
                if self.stopping.is_set():
                    raise WorkerRefused(f"stopped while waiting for {self.server}") from None
                log.warning("%s; retrying in %.0f s", exc, wait)
                self.sleep(wait)
                wait = min(wait * 2, MAX_BACKOFF)
        if reply.status_code != 200:
            raise WorkerRefused(f"{self.server} does not speak the kakumei worker protocol ({reply.status_code})")
        info = reply.json()
        self.lease_seconds = float(info["lease_seconds"])
        return info

    def claim(self, worker_id: str, caps: Capabilities) -> LeasedJob | None:
        reply = self._claim_call("/claim", caps)
        if reply is None or reply.status_code == 204:
            return None
        return self._leased(LeasedJob.model_validate(reply.json(), context=STORED))

    def claim_batch(
        self, worker_id: str, caps: Capabilities, *, max_jobs: int, prefer_model: str | None, slack: float
    ) -> list[LeasedJob]:
        """Several compatible jobs in one claim (the server applies its own fairness slack;
        `slack` is the in-process protocol's and unused here)."""
        body = BatchClaim(
            models=caps.models, max_pixels=caps.max_pixels, max_images=caps.max_images, device=caps.device,
            max_jobs=max_jobs, prefer_model=prefer_model,
        )
        reply = self._claim_call("/claim-batch", body)
        return [] if reply is None else [
            self._leased(job) for job in LeasedJobs.model_validate(reply.json(), context=STORED).leases
        ]

    def _claim_call(self, path: str, body: Capabilities) -> httpx.Response | None:
        """POST a claim; None while the server is away (with backoff before the next try)."""
        if self.backoff:
            self.sleep(self.backoff)
        try:
            reply = self._call("POST", path, body)
        except ServerAway as exc:
            self.backoff = min(max(self.backoff * 2, FIRST_BACKOFF), MAX_BACKOFF)
            log.warning("%s; next try in %.0f s", exc, self.backoff)
            return None
        if self.backoff:
            log.info("%s is back", self.server)
        self.backoff = 0.0
        if reply.status_code not in (200, 204):
            raise WorkerRefused(f"claim refused: {_detail(reply)}")
        return reply

    def _leased(self, job: LeasedJob) -> LeasedJob:
        self.lease_seconds = job.lease_seconds
        return job

    def heartbeat(self, job_id: str, lease_id: str, progress: Progress | None = None) -> HeartbeatReply:
        body = HeartbeatReport(lease_id=lease_id, **(progress or Progress()).model_dump())
        try:
            reply = self._call("POST", f"/jobs/{job_id}/heartbeat", body)
        except ServerAway as exc:
            # Keep working: the server may be back before the lease runs out.
            log.warning("heartbeat for job %s not delivered: %s", job_id, exc)
            return HeartbeatReply(ok=True, cancel_requested=False)
        if reply.status_code == 200:
            return HeartbeatReply.model_validate(reply.json())
        log.warning("job %s: %s", job_id, _detail(reply))
        return HeartbeatReply(ok=False, cancel_requested=True)

    def complete(self, job_id: str, lease_id: str, images: Sequence[ImageReport], seed: int | None) -> bool:
        return self._report(job_id, "complete", ImagesReport(lease_id=lease_id, seed=seed, images=list(images)))

    def fail(self, job_id: str, lease_id: str, reason: str) -> bool:
        return self._report(job_id, "fail", FailureReport(lease_id=lease_id, reason=reason[:MAX_REASON]))

    def acknowledge_cancel(self, job_id: str, lease_id: str, images: Sequence[ImageReport]) -> bool:
        return self._report(job_id, "cancelled", ImagesReport(lease_id=lease_id, seed=None, images=list(images)))

    def claim_check(self, caps: Capabilities) -> CheckTask | None:
        """A re-run to check another worker's result, if this worker is trusted and one waits."""
        try:
            reply = self._retrying("POST", "/checks/claim", caps, for_seconds=5.0)
        except WorkerRefused:
            return None  # not trusted (yet); a revoked key is refused at its next claim
        if reply is None or reply.status_code != 200:
            return None  # 204: none waiting; 403: this worker is not trusted (yet)
        return CheckTask.model_validate(reply.json(), context=STORED)

    def report_check(self, check_id: int, images: Sequence[ImageReport]) -> bool:
        reply = self._retrying("POST", f"/checks/{check_id}", CheckReport(images=list(images)), for_seconds=self.lease_seconds)
        if reply is None or reply.status_code != 200:
            if reply is not None:
                log.warning("check %d: report refused: %s", check_id, _detail(reply))
            return False
        return True

    def release(self, job_id: str, lease_id: str) -> bool:
        return self._report(job_id, "release", Lease(lease_id=lease_id), patient=False)

    def _report(self, job_id: str, what: str, body: BaseModel, *, patient: bool = True) -> bool:
        # Retried while the lease could still be alive; a release on shutdown tries briefly,
        # since the lease running out hands the job back anyway.
        reply = self._retrying(
            "POST", f"/jobs/{job_id}/{what}", body, for_seconds=self.lease_seconds if patient else 5.0
        )
        if reply is None:
            return False
        if reply.status_code == 200:
            return True
        log.warning("job %s: %s refused: %s", job_id, what, _detail(reply))
        return False


def _detail(reply: httpx.Response) -> str:
    try:
        detail = reply.json().get("detail")
    except ValueError:
        detail = None
    return str(detail or f"HTTP {reply.status_code}")

