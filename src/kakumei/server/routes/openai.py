"""POST /v1/images/generations: the OpenAI Images API, so that OpenAI SDKs and the tools built
on them generate on a kakumei server (base_url = this server + "/v1", api_key = a kakumei key).

Requests go through the same fair queue and limits as every other (server/submission.py).
Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, because that is
what the SDKs parse into their exceptions.
"""

from __future__ import annotations

import json
import time

from anyio import to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from kakumei.schemas import GenerationRequest, validation_message
from kakumei.server.bodies import documented, in_parse_pool, read_body
from kakumei.server.deps import caller, services
from kakumei.server.openapi import OpenAIError, problems
from kakumei.server.openai_mapping import ImagesGenerate, Refused, to_generation_request
from kakumei.server.services import Services
from kakumei.server.submission import SubmitRefused, image_b64, submit_generation, wait_finished

router = APIRouter(prefix="/v1", tags=["OpenAI Images API"])


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "invalid_request_error", 429: "rate_limit_error"}.get(status, "invalid_request_error")
    if status >= 500:
        kind = "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _checked(raw: bytes | bytearray, svc: Services) -> tuple[ImagesGenerate, GenerationRequest] | JSONResponse:
    """The request read and checked (in the parse pool), or the error that answers it."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than Python parses
        return _error(400, "the request body is not valid JSON: a UTF-8 JSON object like {\"prompt\": \"...\"}")
    try:
        body = ImagesGenerate.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        return _error(400, validation_message(exc), str(first[0]) if first else None)
    try:
        gen = to_generation_request(body, svc.known_models())
    except Refused as exc:
        return _error(400, str(exc), exc.param)
    except ValidationError as exc:
        return _error(400, validation_message(exc))
    return body, gen


@router.post(
    "/images/generations",
    responses=problems(400, 401, 403, 409, 413, 415, 429, 499, 500, model=OpenAIError),
    openapi_extra=documented(ImagesGenerate),
)
async def images_generations(request: Request) -> JSONResponse:
    """Generate `n` images for `prompt`; waits for the job, then answers
    {"created", "data": [{"url"} or {"b64_json"}, ...]}."""
    svc = services(request)
    try:
        who = await to_thread.run_sync(caller, request)
    except HTTPException as exc:
        return _error(exc.status_code, str(exc.detail), code="invalid_api_key" if exc.status_code == 401 else None)
    # 1. read and check the request, off the event loop
    raw = await read_body(request)
    checked = await in_parse_pool(request, _checked, raw, svc)
    del raw
    if isinstance(checked, JSONResponse):
        return checked
    body, gen = checked
    # 2. queue it through the shared submit path and wait
    try:
        job, _ = await to_thread.run_sync(submit_generation, svc, who, gen)
    except SubmitRefused as exc:
        refused = _error(exc.status, str(exc))
        refused.headers.update(exc.headers)
        return refused
    final = await wait_finished(svc, job.id, request.is_disconnected)
    if final is None:
        return _error(499, "client disconnected; the job was cancelled")
    finished = await to_thread.run_sync(svc.jobs.get, job.id)
    if final != "succeeded" or finished is None:
        reason = finished.error if finished is not None and finished.error else final
        return _error(500, f"generation {final}: {reason}")
    images = await to_thread.run_sync(svc.images.for_job, job.id)
    # 3. answer in OpenAI's shape
    if body.response_format == "b64_json":
        data = await to_thread.run_sync(lambda: [{"b64_json": image_b64(i), "revised_prompt": body.prompt} for i in images])
    else:
        # The native image URL: fetched with the same key (or, anonymous, from the same address).
        base = str(request.base_url).rstrip("/")
        data = [{"url": f"{base}/api/v1/images/{i.id}", "revised_prompt": body.prompt} for i in images]
    return JSONResponse({"created": int(finished.finished_at or time.time()), "data": data})
