"""/api/v2: the AI Horde's v2 API, so that Horde clients (horde_sdk, bots, editor plugins) and
Horde workers use this server unchanged.

Clients: `generate/async` maps the Horde request onto kakumei's (kakumei/horde_mapping.py) and
queues it through the one submit path (server/submission.py): the same admission, limits and
fair queue as every API. `check` and `status` read the job; `DELETE status` cancels it; as
on the Horde, these need only the request's id, which is random and its own (workers see job
ids, never request ids).
Workers: `generate/pop` leases the fair next job with the worker protocol's own claim, hands
out one id and one upload URL on this server per image, and `generate/submit` completes the job
through the native worker API's completion (`worker_api.complete_reported`): leases, seed and
image checks, verification and escrow alike. Refusals are the Horde's `{"message", "rc"}`.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import uuid
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, ValidationError

import kakumei
from kakumei.fairness.cost import request_cost
from kakumei.protocol import Capabilities, ImageReport, ImagesReport
from kakumei.schemas import validation_message
from kakumei.server import job_source
from kakumei.server.bodies import in_parse_pool
from kakumei.server.deps import Svc
from kakumei.server.errors import Refused
from kakumei.server.openapi import Problem
from kakumei import horde_mapping as mapping
from kakumei.server.horde.auth import horde_caller, horde_worker
from kakumei.horde_mapping import HordeError
from kakumei.server.routes import worker_api
from kakumei.server.services import Services
from kakumei.server.submission import SubmitRefused, submit_generation
from kakumei.store.jobs import Job, JobState
from kakumei.store.metrics import queued_by_model
from kakumei.store.workers import WorkerRecord

router = APIRouter(prefix="/api/v2", tags=["AI Horde API"])


class HordeProblem(BaseModel):
    """The Horde's error body."""

    message: str
    rc: str


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    # A 404 may also be the app's own `{"detail"}`: a path holding a control character is
    # not found before any route runs (deps.plain_request).
    return {status: {"model": HordeProblem | Problem if status == 404 else HordeProblem, "description": "refused"}
            for status in statuses}


def _error(exc: HordeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _refused(exc: SubmitRefused | Refused) -> HordeError:
    status = exc.status
    return HordeError(status, mapping.RC_OF_STATUS.get(status, "BadRequest"), str(exc))


def _hex_id(text: str) -> str:
    """kakumei's job id (uuid hex) for the Horde's dashed UUID; 404 for anything else."""
    try:
        return uuid.UUID(text).hex
    except ValueError:
        raise HordeError(404, "RequestNotFound", f"no request {text[:64]!r} of yours") from None


def _dashed(job_id: str) -> str:
    return str(uuid.UUID(job_id))


def _json_object(raw: bytes) -> dict[str, Any] | HordeError:
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return mapping.bad("the body is not JSON")
    if not isinstance(data, dict):
        return mapping.bad("the body must be a JSON object")
    return data


# -- clients --------------------------------------------------------------------------------


def _mapped(raw: bytes, known: list[str]) -> tuple[dict[str, Any], Any] | HordeError:
    data = _json_object(raw)
    if isinstance(data, HordeError):
        return data
    try:
        return data, mapping.to_generation_request(data, known)
    except HordeError as exc:
        return exc
    except (ValidationError, ValueError, TypeError) as exc:
        message = validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
        return HordeError(400, "BadRequest", message)


@router.post("/generate/async", status_code=202, responses=_problems(400, 401, 403, 429))
async def generate_async(request: Request, svc: Svc) -> JSONResponse:
    """Queue an image request (the Horde's `GenerationInputStable`); answers its id and kudos."""
    try:
        who = await to_thread.run_sync(horde_caller, svc, request)
        mapped = await in_parse_pool(request, _mapped, await request.body(), svc.known_models())
        if isinstance(mapped, HordeError):
            raise mapped
        body, gen = mapped
        model = gen.model or svc.settings.model
        if body.get("dry_run"):
            # the price the submit would reserve: the same calibrated factors (a database read)
            factor = await to_thread.run_sync(svc.cost_factor)
            return JSONResponse({"kudos": request_cost(gen, model, factor)}, status_code=200)
        try:
            job, _ = await to_thread.run_sync(submit_generation, svc, who, gen)
        except SubmitRefused as exc:
            raise _refused(exc) from None
        request_id = await to_thread.run_sync(lambda: svc.horde.add_request(job.id, inline=body.get("r2") is False))
    except HordeError as exc:
        return _error(exc)
    return JSONResponse({"id": _dashed(request_id), "kudos": job.cost}, status_code=202)


def _requested(svc: Services, request_id: str) -> tuple[Job, bool]:
    """The job of a Horde request id, and whether its images go inline. As on the Horde, the
    id (random, and never shown to workers) is all that check, status and cancel need."""
    found = svc.horde.request(_hex_id(request_id))
    job = svc.jobs.get(found[0]) if found is not None else None
    if found is None or job is None:
        raise HordeError(404, "RequestNotFound", f"no request {request_id[:64]!r}")
    return job, found[1]


def _check(svc: Services, job: Job) -> dict[str, Any]:
    """The Horde's `RequestStatusCheck` for a job."""
    count = job.request.image_count
    finished = len(svc.images.for_job(job.id)) if job.state in (JobState.SUCCEEDED, JobState.CANCELLED) else 0
    queued = job.state == JobState.QUEUED
    running = job.state in (JobState.LEASED, JobState.RUNNING)
    position, eta = 0, 0
    if not job.finished:
        placed = svc.jobs.place(job.id)
        if placed is not None:
            place, seconds = placed
            position = place.jobs_ahead if queued else 0
            eta = int(seconds or 0)
    return {
        "finished": finished,
        "processing": count if running else 0,
        "restarted": job.attempts,
        "waiting": count if queued else 0,
        "done": job.finished,
        "faulted": job.state == JobState.FAILED,
        "wait_time": eta,
        "queue_position": position,
        "kudos": job.cost,
        "is_possible": True,
    }


def _worker_name(svc: Services, job: Job) -> tuple[str, str]:
    """(id, name) of the worker that made a job's images, as the Horde shows them."""
    owner = job.worker_id or ""
    if owner.startswith("worker:"):
        record = svc.workers.get(int(owner.split(":", 1)[1]))
        if record is not None:
            return str(uuid.UUID(int=record.id)), record.name
    return str(uuid.UUID(int=0)), "kakumei"


def _status(svc: Services, job: Job, base_url: str, r2: bool) -> dict[str, Any]:
    out = _check(svc, job)
    generations = []
    if job.state in (JobState.SUCCEEDED, JobState.CANCELLED):
        worker_id, worker_name = _worker_name(svc, job)
        for image in svc.images.for_job(job.id):
            if r2:
                img = f"{base_url}api/v2/images/{image.id}.png"
            else:
                img = _webp_b64(image.path.read_bytes())
            generations.append({
                "worker_id": worker_id, "worker_name": worker_name, "model": job.model, "state": "ok",
                "img": img, "seed": str(image.seed), "id": str(uuid.UUID(image.id)), "censored": False,
                "gen_metadata": [],
            })
    out["generations"] = generations
    out["shared"] = False
    return out


def _webp_b64(png: bytes) -> str:
    with Image.open(io.BytesIO(png)) as decoded:
        buffer = io.BytesIO()
        decoded.save(buffer, format="WEBP", lossless=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@router.get("/generate/check/{request_id}", responses=_problems(401, 404))
def generate_check(request_id: str, request: Request, svc: Svc) -> JSONResponse:
    """How a request stands, without its images."""
    try:
        return JSONResponse(_check(svc, _requested(svc, request_id)[0]))
    except HordeError as exc:
        return _error(exc)


@router.get("/generate/status/{request_id}", responses=_problems(401, 404))
def generate_status(request_id: str, request: Request, svc: Svc) -> JSONResponse:
    """How a request stands, with its finished images: links on this server, or base64 WebP
    where the request asked for `r2: false`."""
    try:
        job, inline = _requested(svc, request_id)
        return JSONResponse(_status(svc, job, str(request.base_url), not inline))
    except HordeError as exc:
        return _error(exc)


@router.delete("/generate/status/{request_id}", responses=_problems(401, 404))
def cancel_status(request_id: str, request: Request, svc: Svc) -> JSONResponse:
    """Cancel a request; answers its status with the images finished before the stop."""
    try:
        job, inline = _requested(svc, request_id)
        cancelled = svc.jobs.cancel(job.id) or job
        return JSONResponse(_status(svc, cancelled, str(request.base_url), not inline))
    except HordeError as exc:
        return _error(exc)


@router.get("/images/{name}", responses={200: {"content": {"image/png": {}}}, **_problems(404)})
def image(name: str, svc: Svc) -> Response:
    """A finished image by its link: like the Horde's R2 links, the unguessable id is the key."""
    stem, _, suffix = name.partition(".")
    stored = svc.images.get(stem) if suffix == "png" else None
    if stored is None or not stored.path.is_file():
        return _error(HordeError(404, "RequestNotFound", "no such image"))
    return Response(stored.path.read_bytes(), media_type="image/png")


@router.get("/find_user", responses=_problems(401, 404))
def find_user(request: Request, svc: Svc) -> JSONResponse:
    """The caller's account, with kakumei's credits as kudos."""
    try:
        who = horde_caller(svc, request)
    except HordeError as exc:
        return _error(exc)
    user = who.user
    workers = [] if user.is_anonymous else svc.workers.list(user.id)
    kudos = 0.0 if user.is_anonymous else svc.ledger.balance(user.id)
    return JSONResponse({
        "username": f"{user.name}#{user.id}",
        "id": user.id,
        "kudos": kudos,
        "concurrency": svc.settings.max_queued_jobs,
        "worker_invited": 0,
        "moderator": bool(user.is_admin),
        "kudos_details": {"accumulated": kudos, "gifted": 0, "admin": 0, "received": 0, "recurring": 0, "awarded": 0},
        "worker_count": len(workers),
        "worker_ids": [str(uuid.UUID(int=w.id)) for w in workers],
        "sharedkey_ids": [],
        "trusted": False,
        "flagged": False,
        "vpn": False,
        "service": False,
        "education": False,
        "special": False,
        "pseudonymous": user.is_anonymous,
        "account_age": 0,
        "usage": {"megapixelsteps": 0, "requests": 0},
        "contributions": {"megapixelsteps": 0, "fulfillments": 0},
    })


@router.get("/status/heartbeat")
def heartbeat() -> dict[str, str]:
    """The Horde's liveness answer."""
    return {"message": "OK", "version": kakumei.__version__}


@router.get("/status/models")
def status_models(svc: Svc) -> list[dict[str, Any]]:
    """The models this server serves, as the Horde lists active models."""
    queued = queued_by_model(svc.db)
    return [
        {"name": name, "count": 1, "performance": 0.0, "queued": 0.0, "jobs": float(queued.get(name, 0)),
         "eta": 0, "type": "image"}
        for name in svc.known_models()
    ]


@router.get("/status/performance")
def status_performance(svc: Svc) -> dict[str, Any]:
    """Queue and worker figures in the Horde's shape."""
    queued = sum(queued_by_model(svc.db).values())
    return {
        "queued_requests": queued, "queued_text_requests": 0, "worker_count": 1, "text_worker_count": 0,
        "thread_count": 1, "text_thread_count": 0, "queued_megapixelsteps": 0.0, "past_minute_megapixelsteps": 0.0,
        "queued_forms": 0, "interrogator_count": 0, "interrogator_thread_count": 0, "queued_tokens": 0,
        "past_minute_tokens": 0,
    }


# -- workers --------------------------------------------------------------------------------


def _empty_pop(skipped: dict[str, int] | None = None) -> dict[str, Any]:
    return {"id": None, "ids": [], "payload": {}, "skipped": skipped or {}, "model": None, "ttl": None}


def _capabilities(body: dict[str, Any]) -> Capabilities:
    models = body.get("models") or None
    max_pixels = body.get("max_pixels")
    try:
        return Capabilities(
            models=tuple(models) if models else None,
            max_pixels=max(64 * 64, int(max_pixels)) if max_pixels else None,
        )
    except (ValidationError, TypeError, ValueError) as exc:
        message = validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
        raise mapping.bad(message) from None


def _pop(svc: Services, request: Request, raw: bytes) -> dict[str, Any]:
    body = _json_object(raw)
    if isinstance(body, HordeError):
        raise body
    name = body.get("name")
    worker = horde_worker(svc, request, name if isinstance(name, str) else None)
    caps = _capabilities(body)
    svc.workers.seen(worker.id, caps.model_dump(mode="json"))
    lease = svc.jobs.claim(worker.lease_owner, caps)
    if lease is None:
        return _empty_pop()
    job = lease.job
    req = job.request
    why = mapping.horde_cannot_run(req)
    if why is None and req.init_images and not body.get("allow_img2img", True):
        why = "img2img"
    if why is None and req.mask and not body.get("allow_painting", False):
        why = "painting"
    if why is not None:
        # Back to the queue untouched for a worker that can run it.
        svc.jobs.release(job.id, lease.lease_id)
        return _empty_pop({why if why in ("img2img", "painting") else "bridge_version": 1})
    svc.jobs.extend_lease(job.id, lease.lease_id, svc.settings.horde_lease_seconds)
    seed = req.seed if req.seed != -1 else secrets.randbelow(mapping.SEED_MODULUS)
    generations = svc.horde.hand_out(job.id, lease.lease_id, worker.id, req.image_count)
    base = str(request.base_url)
    uploads = [f"{base}api/v2/r2/{g.id}?token={g.upload_token}" for g in generations]
    leased = job_source.leased_job(svc.db, job, lease.lease_id, svc.settings.horde_lease_seconds).request
    out: dict[str, Any] = {
        "id": str(uuid.UUID(generations[0].id)),
        "ids": [str(uuid.UUID(g.id)) for g in generations],
        "payload": mapping.horde_payload(req, seed),
        "skipped": {},
        "model": job.model,
        "source_processing": "inpainting" if req.mask else "img2img",
        "r2_upload": uploads[0],
        "r2_uploads": uploads,
        "ttl": int(svc.settings.horde_lease_seconds),
    }
    if leased.init_images:
        out["source_image"] = leased.init_images[0]
    if leased.mask:
        out["source_mask"] = leased.mask
    return out


@router.post("/generate/pop", responses=_problems(400, 401, 403))
async def generate_pop(request: Request, svc: Svc) -> JSONResponse:
    """A Horde worker asks for work: the fair next job it can run, one id and upload URL per image."""
    raw = await request.body()
    try:
        return JSONResponse(await to_thread.run_sync(_pop, svc, request, raw))
    except HordeError as exc:
        return _error(exc)


@router.put("/r2/{generation_id}", responses=_problems(404))
async def upload(generation_id: str, request: Request, svc: Svc) -> Response:
    """Where a popped generation's image goes (the Horde's R2 upload): the URL's token is the key."""
    token = request.query_params.get("token") or ""
    data = await request.body()
    if not await to_thread.run_sync(svc.horde.upload, _hex_or_empty(generation_id), token, data):
        return _error(HordeError(404, "InvalidJobID", "this upload URL names no generation"))
    return Response(status_code=200)


def _hex_or_empty(text: str) -> str:
    try:
        return uuid.UUID(text).hex
    except ValueError:
        return ""


def _as_png(data: bytes, size: tuple[int, int]) -> bytes:
    """A worker's image (WebP, PNG, ...) as the PNG the image store keeps."""
    try:
        with Image.open(io.BytesIO(data)) as decoded:
            if decoded.size != size:
                raise mapping.bad(f"the image is {decoded.size[0]}x{decoded.size[1]}; the job asks for {size[0]}x{size[1]}")
            buffer = io.BytesIO()
            decoded.convert("RGB").save(buffer, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise HordeError(400, "ImageValidationFailed", "the generation is not a readable image") from None
    return buffer.getvalue()


def _submit(svc: Services, request: Request, raw: bytes) -> dict[str, Any]:
    body = _json_object(raw)
    if isinstance(body, HordeError):
        raise body
    gen_id = _hex_or_empty(str(body.get("id") or ""))
    generation = svc.horde.get(gen_id) if gen_id else None
    if generation is None:
        raise HordeError(404, "InvalidJobID", "no generation has this id (it finished, or its lease ran out)")
    worker = _submitter(svc, request, generation.worker_id)
    job = svc.jobs.get(generation.job_id)
    if job is None or job.worker_id != worker.lease_owner or job.finished:
        if job is None or job.finished:
            svc.horde.forget(generation.job_id)
        raise HordeError(404, "InvalidJobID", "this generation is no longer leased to this worker")
    state = str(body.get("state") or "ok")
    if state != "ok":
        # A censored or faulted image is no image: another worker runs the job, as with a
        # native worker's failure report, and it fails after max_attempts.
        svc.jobs.release(job.id, generation.lease_id, count_attempt=True, reason=f"horde worker reported {state[:40]!r}")
        svc.workers.on_failed(worker.id)
        svc.horde.forget(job.id)
        return {"reward": 0}
    try:
        seed = int(body.get("seed"))
    except (TypeError, ValueError):
        raise mapping.bad("seed must be the integer the image was made with") from None
    inline = body.get("generation")
    data = None
    if isinstance(inline, str) and inline not in ("", "R2"):
        try:
            data = base64.b64decode(inline, validate=True)
        except ValueError:
            raise HordeError(400, "ImageValidationFailed", "generation is neither R2 nor base64") from None
    else:
        data = svc.horde.uploaded(generation.id)
        if data is None:
            raise HordeError(400, "ImageValidationFailed", "nothing was uploaded to this generation's r2_upload URL")
    size = job.request.hr_size if job.request.enable_hr else (job.request.width, job.request.height)
    svc.horde.submit(generation.id, seed, state, _as_png(data, size))
    generations = svc.horde.of_lease(job.id, generation.lease_id)
    if any(g.submitted_state is None for g in generations):
        return {"reward": 0}
    images = []
    for g in generations:
        png = svc.horde.uploaded(g.id)
        assert png is not None and g.seed is not None
        images.append(ImageReport.of_png(png, seed=g.seed, index=g.index))
    report = ImagesReport(lease_id=generation.lease_id, seed=generations[0].seed, images=images)
    try:
        worker_api.complete_reported(svc, worker, job.id, report)
    except Refused as exc:
        raise _refused(exc) from None
    svc.horde.forget(job.id)
    return {"reward": job.cost}


def _submitter(svc: Services, request: Request, worker_id: int) -> WorkerRecord:
    """The worker a generation was handed to, by its own key or its owner's."""
    record = svc.workers.get(worker_id)
    if record is None:
        raise HordeError(404, "InvalidJobID", "no generation has this id")
    worker = horde_worker(svc, request, record.name)
    if worker.id != worker_id:
        raise HordeError(403, "WrongCredentials", "this generation was handed to another worker")
    return worker


@router.post("/generate/submit", responses=_problems(400, 401, 403, 404))
async def generate_submit(request: Request, svc: Svc) -> JSONResponse:
    """A Horde worker's finished generation; the job completes when all of its images are in."""
    raw = await request.body()
    try:
        return JSONResponse(await to_thread.run_sync(_submit, svc, request, raw))
    except HordeError as exc:
        return _error(exc)
