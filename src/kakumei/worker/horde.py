"""`JobSource` over the AI Horde's worker API: `kakumei worker --horde URL` lends this machine
to a horde (the public AI Horde, or a kakumei server's /api/v2), running its jobs on kakumei's
engine through the same `Worker` loop as every other source.

A pop is one job of one or more images; its request is read with the same mapping as the
server's (`horde_mapping.request_from_pop`). Each image is uploaded as WebP to its upload URL
(or sent inline where the horde gave none) and submitted with its seed. The Horde has no
heartbeat, no cancel and no hand-back: a job given up is submitted as faulted, which sends it
to another worker.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

import httpx
from PIL import Image

import kakumei
from kakumei.errors import KakumeiError
from kakumei.horde_mapping import HordeError, request_from_pop
from kakumei.protocol import Capabilities, HeartbeatReply, ImageReport, LeasedJob, Progress

log = logging.getLogger(__name__)

DEFAULT_TTL = 300.0  # seconds a popped job is held, where the horde does not say


class HordeRefused(KakumeiError):
    """The horde will not let this worker work (bad key, a name of someone else's, ...)."""


class HordeJobSource:
    """Pops jobs from a horde at `url` (its root: `/api/v2/...` is added) with `key`, its
    owner's API key, as the worker `name`."""

    def __init__(self, url: str, key: str, name: str, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        if self.url.endswith("/api"):
            self.url = self.url[: -len("/api")]
        self.name = name
        self.client = httpx.Client(
            base_url=self.url, headers={"apikey": key, "Client-Agent": f"kakumei:{kakumei.__version__}:worker"},
            timeout=timeout,
        )
        self.stopping = threading.Event()
        self.lease_seconds = DEFAULT_TTL
        # job id -> (generation ids, upload URLs) of the jobs this worker holds
        self._held: dict[str, tuple[list[str], list[str] | None]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            response = self.client.post(f"/api/v2{path}", json=body)
        if response.status_code in (401, 403):
            raise HordeRefused(f"the horde refused this worker: {_message(response)}")
        if response.status_code >= 400:
            raise HordeError(response.status_code, str(_rc(response)), _message(response))
        return response.json()

    def claim(self, worker_id: str, caps: Capabilities) -> LeasedJob | None:
        body = {
            "name": self.name, "models": list(caps.models or []), "max_pixels": caps.max_pixels or 1024 * 1024,
            "amount": 1, "bridge_agent": f"kakumei:{kakumei.__version__}:kakumei worker --horde", "nsfw": True,
            "allow_img2img": True, "allow_painting": True, "allow_post_processing": False, "allow_controlnet": False,
            "allow_lora": False, "threads": 1,
        }
        try:
            pop = self._post("/generate/pop", body)
        except (httpx.HTTPError, HordeError) as exc:
            log.warning("pop failed: %s", exc)
            return None
        ids = pop.get("ids") or ([pop["id"]] if pop.get("id") else [])
        if not ids:
            return None
        job_id = ids[0]
        try:
            pop = self._downloaded(pop)
            request = request_from_pop(pop)
        except (HordeError, ValueError, httpx.HTTPError) as exc:
            # A job this engine cannot run goes back to the horde for another worker.
            log.warning("cannot run popped job %s: %s", job_id, exc)
            self._submit_all(ids, "faulted")
            return None
        if request.image_count != len(ids):
            self._submit_all(ids, "faulted")
            return None
        with self._lock:
            self._held[job_id] = (list(ids), pop.get("r2_uploads") or None)
        ttl = float(pop.get("ttl") or DEFAULT_TTL)
        return LeasedJob(
            job_id=job_id, lease_id=job_id, lease_seconds=ttl, model=pop.get("model") or request.model or "",
            request=request, cost=0.0, attempts=0,
        )

    def _downloaded(self, pop: dict[str, Any]) -> dict[str, Any]:
        """The pop with source images as base64 (the public Horde hands out URLs)."""
        out = dict(pop)
        for field in ("source_image", "source_mask"):
            value = out.get(field)
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                response = httpx.get(value, timeout=60)
                response.raise_for_status()
                out[field] = base64.b64encode(response.content).decode("ascii")
        return out

    def heartbeat(self, job_id: str, lease_id: str, progress: Progress | None = None) -> HeartbeatReply:
        # The Horde has no heartbeat: the job is held for its ttl.
        return HeartbeatReply(ok=job_id in self._held, cancel_requested=False)

    def complete(self, job_id: str, lease_id: str, images: Sequence[ImageReport], seed: int | None) -> bool:
        held = self._take(job_id)
        if held is None:
            return False
        ids, uploads = held
        done = True
        for image in sorted(images, key=lambda i: i.index):
            webp = _webp(image.png())
            generation = "R2"
            try:
                if uploads:
                    put = httpx.put(uploads[image.index], content=webp, headers={"Content-Type": "image/webp"}, timeout=120)
                    put.raise_for_status()
                else:
                    generation = base64.b64encode(webp).decode("ascii")
                self._post("/generate/submit", {"id": ids[image.index], "generation": generation, "state": "ok",
                                                "seed": image.seed})
            except (httpx.HTTPError, HordeError) as exc:
                log.warning("submit of %s failed: %s", ids[image.index], exc)
                done = False
        return done

    def fail(self, job_id: str, lease_id: str, reason: str) -> bool:
        held = self._take(job_id)
        if held is not None:
            self._submit_all(held[0], "faulted")
        return held is not None

    def acknowledge_cancel(self, job_id: str, lease_id: str, images: Sequence[ImageReport]) -> bool:
        return self.fail(job_id, lease_id, "cancelled")

    def release(self, job_id: str, lease_id: str) -> bool:
        # No hand-back on the Horde: faulted sends the job to another worker.
        return self.fail(job_id, lease_id, "worker stopping")

    def _take(self, job_id: str) -> tuple[list[str], list[str] | None] | None:
        with self._lock:
            return self._held.pop(job_id, None)

    def _submit_all(self, ids: Sequence[str], state: str) -> None:
        for gen_id in ids:
            try:
                self._post("/generate/submit", {"id": gen_id, "generation": "", "state": state, "seed": 0})
            except (httpx.HTTPError, HordeError) as exc:
                log.warning("could not report %s as %s: %s", gen_id, state, exc)


def _webp(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as decoded:
        buffer = io.BytesIO()
        decoded.save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message") or response.text[:200])
    except (ValueError, json.JSONDecodeError, AttributeError):
        return response.text[:200]


def _rc(response: httpx.Response) -> str:
    try:
        return str(response.json().get("rc") or "BadRequest")
    except (ValueError, AttributeError):
        return "BadRequest"
