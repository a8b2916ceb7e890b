"""POST /v1/images/generations and /v1/images/edits: the OpenAI Images API, so that OpenAI
SDKs and the tools built on them generate on a kakumei server (base_url = this server +
"/v1", api_key = a kakumei key).

Requests go through the same fair queue and limits as every other (server/submission.py).
Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, because that is
what the SDKs parse into their exceptions.
"""

from __future__ import annotations

import json
import time
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from kakumei.schemas import GenerationRequest, validation_message
from kakumei.server.bodies import documented, in_parse_pool, read_body
from kakumei.server.limits import release_body
from kakumei.server.deps import Caller, caller, services
from kakumei.server.limits import cross_site_form
from kakumei.server.multipart import FormError, Part, form_parts, is_form
from kakumei.server.openai_errors import openai_error, param_of
from kakumei.server.openai_mapping import (
    PARAM_OF_FIELD,
    ImagesGenerate,
    Refused,
    edit_form_documented,
    to_edit_request,
    to_generation_request,
)
from kakumei.server.openapi import OpenAIError, problems
from kakumei.server.services import Services
from kakumei.server.submission import SubmitRefused, image_b64, submit_generation, wait_finished

router = APIRouter(prefix="/v1", tags=["OpenAI Images API"])


def _invalid(exc: ValidationError) -> JSONResponse:
    """GenerationRequest's refusal, named by the OpenAI parameter that set the field."""
    errors = exc.errors()
    field = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
    return openai_error(400, validation_message(exc), PARAM_OF_FIELD.get(field or ""))


def _body(data: Any) -> ImagesGenerate | JSONResponse:
    try:
        return ImagesGenerate.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        return openai_error(400, validation_message(exc), param_of(first))


def _checked(raw: bytes | bytearray, svc: Services) -> tuple[ImagesGenerate, GenerationRequest] | JSONResponse:
    """The request read and checked (in the parse pool), or the error that answers it."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than Python parses
        return openai_error(400, "the request body is not valid JSON: a UTF-8 JSON object like {\"prompt\": \"...\"}")
    body = _body(data)
    if isinstance(body, JSONResponse):
        return body
    try:
        gen = to_generation_request(body, svc.known_models())
    except Refused as exc:
        return openai_error(400, str(exc), exc.param)
    except ValidationError as exc:
        return _invalid(exc)
    return body, gen


def _one_file(parts: dict[str, list[Part]], *names: str) -> bytes | None | JSONResponse:
    found = [part for name in names for part in parts.get(name, [])]
    if len(found) > 1:
        return openai_error(400, f"kakumei edits one {names[0]} at a time; {len(found)} were sent", names[0])
    return found[0].data if found else None


def _checked_edit(
    raw: bytes | bytearray, content_type: str, svc: Services
) -> tuple[ImagesGenerate, GenerationRequest] | JSONResponse:
    """An edit's form read and checked (in the parse pool), or the error that answers it."""
    try:
        parts = form_parts(raw, content_type)
    except FormError as exc:
        return openai_error(400, str(exc))
    image = _one_file(parts, "image", "image[]")
    mask = _one_file(parts, "mask")
    if isinstance(image, JSONResponse) or isinstance(mask, JSONResponse):
        return image if isinstance(image, JSONResponse) else mask  # type: ignore[return-value]
    if image is None:
        return openai_error(400, "image is required: the PNG to edit, as a file field of the form", "image")
    fields = {name: got[0].data.decode("utf-8", "replace") for name, got in parts.items()
              if name not in ("image", "image[]", "mask") and got[0].filename is None}
    body = _body(fields)
    if isinstance(body, JSONResponse):
        return body
    try:
        gen = to_edit_request(body, image, mask, svc.known_models())
    except Refused as exc:
        return openai_error(400, str(exc), exc.param)
    except ValidationError as exc:
        return _invalid(exc)
    return body, gen


async def _caller(request: Request) -> Caller | JSONResponse:
    try:
        return await to_thread.run_sync(caller, request)
    except HTTPException as exc:
        return openai_error(exc.status_code, str(exc.detail), headers=exc.headers)


async def _generate(request: Request, svc: Services, who: Caller, body: ImagesGenerate, gen: GenerationRequest) -> JSONResponse:
    """Queue `gen` through the shared submit path, wait, and answer in OpenAI's shape: the one
    path of generations and edits."""
    # 1. queue it (fair queue, the caller's limits) and wait, cancelling if the client leaves
    try:
        job, _ = await to_thread.run_sync(submit_generation, svc, who, gen)
    except SubmitRefused as exc:
        return openai_error(exc.status, str(exc), "model" if "unknown model" in str(exc) else None, headers=exc.headers)
    final = await wait_finished(svc, job.id, request.is_disconnected)
    if final is None:
        return openai_error(499, "client disconnected; the job was cancelled")
    finished = await to_thread.run_sync(svc.jobs.get, job.id)
    if final != "succeeded" or finished is None:
        reason = finished.error if finished is not None and finished.error else final
        return openai_error(500, f"generation {final}: {reason}")
    images = await to_thread.run_sync(svc.images.for_job, job.id)
    # 2. answer in OpenAI's shape. `revised_prompt` is the prompt that was encoded: the
    # English of a Japanese one (OpenAI's models revise prompts too).
    revised = finished.request.prompt
    if body.response_format == "b64_json":
        data = await to_thread.run_sync(lambda: [{"b64_json": image_b64(i), "revised_prompt": revised} for i in images])
    else:
        # The native image URL: fetched with the same key (or, anonymous, from the same address).
        base = str(request.base_url).rstrip("/")
        data = [{"url": f"{base}/api/v1/images/{i.id}", "revised_prompt": revised} for i in images]
    return JSONResponse({"created": int(finished.finished_at or time.time()), "data": data})


@router.post(
    "/images/generations",
    responses=problems(400, 401, 403, 409, 413, 415, 429, 499, 500, model=OpenAIError),
    openapi_extra=documented(ImagesGenerate),
)
async def images_generations(request: Request) -> JSONResponse:
    """Generate `n` images for `prompt`; waits for the job, then answers
    {"created", "data": [{"url"} or {"b64_json"}, ...]}."""
    svc = services(request)
    who = await _caller(request)
    if isinstance(who, JSONResponse):
        return who
    raw = await read_body(request)
    checked = await in_parse_pool(request, _checked, raw, svc)
    del raw
    release_body(request)
    if isinstance(checked, JSONResponse):
        return checked
    return await _generate(request, svc, who, *checked)


@router.post(
    "/images/edits",
    responses=problems(400, 401, 403, 409, 413, 415, 429, 499, 500, model=OpenAIError),
    openapi_extra=edit_form_documented(),
)
async def images_edits(request: Request) -> JSONResponse:
    """Edit `image` where `mask` (or the image itself) is fully transparent, as OpenAI's
    images.edit does: a multipart form in, the generations answer out, through the same queue."""
    svc = services(request)
    who = await _caller(request)
    if isinstance(who, JSONResponse):
        return who
    refused = cross_site_form(request, svc.settings.cors_origins)
    if refused is not None:
        return openai_error(403, refused)
    content_type = request.headers.get("content-type", "")
    if not is_form(content_type):
        return openai_error(415, "send the edit as multipart/form-data (image, mask, prompt, n, size, response_format)")
    raw = await read_body(request)
    checked = await in_parse_pool(request, _checked_edit, raw, content_type, svc)
    del raw
    release_body(request)
    if isinstance(checked, JSONResponse):
        return checked
    return await _generate(request, svc, who, *checked)
