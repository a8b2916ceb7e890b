"""/sdapi/v1: the AUTOMATIC1111 API, so that its clients (image editor plugins, chat bots,
scripts) work against a shared server unchanged.

txt2img and img2img are synchronous, as in A1111: the request waits until its job is done.
The job goes through the same fair queue and limits as any other (server/submission.py), and
waits without holding the event loop or a database connection. progress, interrupt and skip
act on the caller's own current job, never on anybody else's.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from kakumei import schemas
from kakumei.engine.model_files import embedding_files, lora_files
from kakumei.images import decode_image_b64
from kakumei.schemas import GenerationRequest, validation_message
from kakumei.server.a1111 import mapping
from kakumei.server.a1111.auth import a1111_caller
from kakumei.server.a1111.models import (
    EmbeddingItem,
    EmbeddingsResponse,
    Img2ImgRequest,
    ImageResponse,
    LatentUpscalerModeItem,
    LoraItem,
    MemoryResponse,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    PromptStyleItem,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    Txt2ImgRequest,
    UpscalerItem,
)
from kakumei.server.a1111.options import caller_options
from kakumei.server.bodies import documented, in_parse_pool, json_body
from kakumei.server.limits import release_body
from kakumei.server.deps import Caller, Svc
from kakumei.server.openapi import problems
from kakumei.server.services import Services
from kakumei.server.submission import SubmitRefused, image_b64, submit_generation, wait_finished
from kakumei.store.activity import ActiveJob, active_jobs, latest_preview

# Every route asks who the caller is (a1111_caller), so any may answer 401 or 403.
router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 API"], responses=problems(401, 403))

CallerDep = Annotated[Caller, Depends(a1111_caller)]


def _unprocessable(exc: ValidationError) -> JSONResponse:
    return JSONResponse({"detail": validation_message(exc)}, status_code=422)


def _mapped(body: Txt2ImgRequest | Img2ImgRequest, options: Any, known_models: list[str]) -> GenerationRequest | JSONResponse:
    """kakumei's request for an A1111 one, or the refusal that answers it (returned, not
    raised: a traceback would keep the request's images alive for as long as it lives)."""
    try:
        return mapping.to_generation_request(body, options, known_models)
    except mapping.Unsupported as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)
    except ValidationError as exc:
        return _unprocessable(exc)


async def _generate(
    svc: Services, who: Caller, request: Request, body: Txt2ImgRequest | Img2ImgRequest
) -> ImageResponse | JSONResponse:
    # 1. map the A1111 request onto kakumei's, with the caller's options
    options = await to_thread.run_sync(caller_options(request).get, who)  # a database read
    # In the parse pool: building the request decodes and checks every input image.
    gen = await in_parse_pool(request, _mapped, body, options, svc.known_models())
    release_body(request)  # parsed and decoded: the next upload may be read
    if isinstance(gen, JSONResponse):
        return gen
    # 2. queue it through the shared submit path (fair queue, caller's limits)
    try:
        job, _ = await to_thread.run_sync(submit_generation, svc, who, gen)
    except SubmitRefused as exc:
        raise HTTPException(exc.status, str(exc), exc.headers) from None
    # 3. wait for it, cancelling it if the client goes away
    final = await wait_finished(svc, job.id, request.is_disconnected)
    if final is None:
        return JSONResponse({"detail": "client disconnected; the job was cancelled"}, status_code=499)
    # 4. answer with the images (kept ones too, when interrupted) and A1111's info
    job, images = await to_thread.run_sync(_finished, svc, job.id)
    if final == "failed":
        raise HTTPException(500, f"generation failed: {job.error}")
    encoded = await to_thread.run_sync(lambda: [image_b64(i) for i in images]) if body.send_images else []
    return ImageResponse(images=encoded, parameters=mapping.echoed_parameters(body), info=mapping.job_info(job, job.request, images))


def _finished(svc: Services, job_id: str) -> tuple[Any, list[Any]]:
    job = svc.jobs.get(job_id)
    assert job is not None
    return job, svc.images.for_job(job_id)


# Bodies are read and validated in the parse pool (server/bodies.py), after the caller.
# Their images are decoded after the caller's options are read (_generate), which gives the
# body's share of the byte budget back.
Txt2ImgBody = Annotated[Txt2ImgRequest, Depends(json_body(Txt2ImgRequest, release=False))]
Img2ImgBody = Annotated[Img2ImgRequest, Depends(json_body(Img2ImgRequest, release=False))]
# Decoded in the route, which ends right after: the body's share goes back with the request.
PngInfoBody = Annotated[PngInfoRequest, Depends(json_body(PngInfoRequest, release=False))]


@router.post("/txt2img", response_model=ImageResponse, responses=problems(400, 409, 413, 415, 422, 429, 499, 500),
             openapi_extra=documented(Txt2ImgRequest))
async def txt2img(request: Request, svc: Svc, who: CallerDep, body: Txt2ImgBody) -> ImageResponse | JSONResponse:
    """Text to image; waits for the job and answers with base64 PNGs carrying infotext."""
    return await _generate(svc, who, request, body)


@router.post("/img2img", response_model=ImageResponse, responses=problems(400, 409, 413, 415, 422, 429, 499, 500),
             openapi_extra=documented(Img2ImgRequest))
async def img2img(request: Request, svc: Svc, who: CallerDep, body: Img2ImgBody) -> ImageResponse | JSONResponse:
    """Image to image, and inpainting with `mask`; waits for the job."""
    return await _generate(svc, who, request, body)


def _current(svc: Services, who: Caller) -> tuple[ActiveJob | None, int]:
    addr = who.scope_addr
    jobs = active_jobs(svc.db, who.user.id, addr)
    return (jobs[0] if jobs else None), len(jobs)


@router.get("/progress", response_model=ProgressResponse)
def progress(svc: Svc, who: CallerDep, skip_current_image: Annotated[bool, Query()] = False) -> ProgressResponse:
    """Progress of the caller's current job (their running job, else their next queued one)."""
    job, count = _current(svc, who)
    if job is None:
        return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState())
    placed = svc.jobs.place(job.id)
    running = job.state != "queued"
    preview = latest_preview(svc.db, job.id) if running and not skip_current_image else None
    return mapping.progress_response(job, count, placed, preview)


@router.post("/interrupt")
def interrupt(svc: Svc, who: CallerDep) -> dict[str, Any]:
    """Stop the caller's current job; images finished before the stop are still returned."""
    job, _ = _current(svc, who)
    if job is not None:
        svc.jobs.cancel(job.id)
    return {}


@router.post("/skip")
def skip(svc: Svc, who: CallerDep) -> None:
    """As interrupt: kakumei cannot skip one batch of a job and go on with the next."""
    job, _ = _current(svc, who)
    if job is not None:
        svc.jobs.cancel(job.id)


@router.get("/options")
def get_options(request: Request, svc: Svc, who: CallerDep) -> dict[str, Any]:
    """The caller's options: A1111's option names, at the values kakumei generates with."""
    return mapping.reported_options(caller_options(request).get(who), svc.settings.model)


@router.post("/options", responses=problems(400, 413))
def set_options(
    request: Request, svc: Svc, who: CallerDep, body: Annotated[dict[str, Any], Body()]
) -> None:
    """Set the caller's own options (other users are not affected). sd_model_checkpoint and
    CLIP_stop_at_last_layers apply to the caller's next generations; options that would change
    images in a way kakumei cannot reproduce are refused; the rest are kept and echoed."""
    try:
        checked = mapping.checked_options(body, svc.known_models())
    except mapping.Unsupported as exc:
        raise HTTPException(400, str(exc)) from None
    caller_options(request).update(who, checked)


@router.get("/cmd-flags")
def cmd_flags(svc: Svc, who: CallerDep) -> dict[str, Any]:
    return mapping.command_line_flags(svc.settings)


@router.get("/samplers", response_model=list[SamplerItem])
def samplers(who: CallerDep) -> list[SamplerItem]:
    return [SamplerItem(name=n, aliases=mapping.SAMPLER_ALIASES.get(n, []), options={}) for n in schemas.SAMPLER_NAMES]


@router.get("/schedulers", response_model=list[SchedulerItem])
def schedulers(who: CallerDep) -> list[SchedulerItem]:
    return [
        SchedulerItem(name=name, label=label, aliases=aliases, default_rho=rho, need_inner_model=inner)
        for name, label, aliases, rho, inner in mapping.SCHEDULES
    ]


@router.get("/upscalers", response_model=list[UpscalerItem])
def upscalers(who: CallerDep) -> list[UpscalerItem]:
    """Pixel upscalers for hires fix (the latent ones are in /latent-upscale-modes)."""
    return [
        UpscalerItem(name=name, model_name=None, model_path=None, model_url=None, scale=4 if name != "None" else None)
        for name in schemas.HR_UPSCALERS
        if not name.startswith("Latent")
    ]


@router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
def latent_upscale_modes(who: CallerDep) -> list[LatentUpscalerModeItem]:
    return [LatentUpscalerModeItem(name=n) for n in schemas.HR_UPSCALERS if n.startswith("Latent")]


@router.get("/sd-models", response_model=list[SDModelItem])
def sd_models(request: Request, svc: Svc, who: CallerDep) -> list[SDModelItem]:
    """Models jobs may name; `title` is what sd_model_checkpoint takes. `hash` (A1111's short
    hash, the one images record) and `sha256` are those of the model's files on disk, None
    for a hub model or while a big file is still being hashed; `filename` is relative to the
    models folder."""
    known = svc.known_models()
    files = request.app.state.model_hashes.describe(known, svc.engine)
    return [mapping.sd_model_item(name, files.get(name)) for name in known]


@router.post("/refresh-checkpoints")
def refresh_checkpoints(who: CallerDep) -> None:
    """Nothing to do: the model list is read on every /sd-models call."""


@router.get("/loras", response_model=list[LoraItem])
def loras(svc: Svc, who: CallerDep) -> list[LoraItem]:
    """LoRA files in this server's models folder, for `<lora:name:weight>` in prompts."""
    return [LoraItem(name=n, alias=n, path=p.name) for n, p in lora_files(svc.settings.models_dir).items()]


@router.get("/embeddings", response_model=EmbeddingsResponse)
def embeddings(svc: Svc, who: CallerDep) -> EmbeddingsResponse:
    return EmbeddingsResponse(loaded={n: EmbeddingItem() for n in embedding_files(svc.settings.models_dir)}, skipped={})


@router.get("/prompt-styles", response_model=list[PromptStyleItem])
def prompt_styles(who: CallerDep) -> list[PromptStyleItem]:
    """kakumei keeps no prompt styles (A1111 ignores unknown style names too)."""
    return []


@router.get("/scripts", response_model=ScriptsList)
def scripts(who: CallerDep) -> ScriptsList:
    return ScriptsList(txt2img=[], img2img=[])


@router.get("/memory", response_model=MemoryResponse)
def memory(who: CallerDep) -> MemoryResponse:
    """This server's RAM, and its GPU memory when the local worker uses CUDA."""
    ram: dict[str, Any]
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        free = page * os.sysconf("SC_AVPHYS_PAGES")
        ram = {"free": free, "used": total - free, "total": total}
    except (ValueError, OSError, AttributeError):
        ram = {"error": "unavailable"}
    cuda: dict[str, Any] = {"error": "unavailable"}
    torch = sys.modules.get("torch")  # only if the local worker already loaded it
    if torch is not None and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        cuda = {
            "system": {"free": free, "used": total - free, "total": total},
            "active": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()},
        }
    return MemoryResponse(ram=ram, cuda=cuda)


@router.post("/png-info", response_model=PngInfoResponse, responses=problems(400, 413, 415, 422), openapi_extra=documented(PngInfoRequest))
def png_info(who: CallerDep, body: PngInfoBody) -> PngInfoResponse:
    """The generation parameters a PNG carries, as A1111 reads them."""
    if not body.image.strip():
        return PngInfoResponse(info="")
    try:
        img = decode_image_b64(body.image, "image", schemas.MAX_INPUT_PIXELS, schemas.MAX_INPUT_BYTES)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    text = {k: v for k, v in (getattr(img, "text", None) or {}).items() if isinstance(v, str)}
    info = text.pop("parameters", "")
    return PngInfoResponse(info=info, items=text, parameters=mapping.png_info_parameters(info))
