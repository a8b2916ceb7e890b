"""POST /v1/images/generations: the OpenAI Images API, so that OpenAI SDKs and the tools built
on them generate on a kakumei server (base_url = this server + "/v1", api_key = a kakumei key).

Requests go through the same fair queue and limits as every other (server/submission.py).
Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, because that is
what the SDKs parse into their exceptions.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kakumei.schemas import MAX_BATCH_SIZE, GenerationRequest, validation_message
from kakumei.server.deps import caller, services
from kakumei.server.submission import SubmitRefused, image_b64, submit_generation, wait_finished

router = APIRouter(prefix="/v1", tags=["OpenAI Images API"])

# OpenAI's own model names mean "the server's default model" here.
OPENAI_MODELS = frozenset({"dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini"})
MAX_N = 10
_SIZE = re.compile(r"^(\d+)x(\d+)$")


class ImagesGenerate(BaseModel):
    """The fields of OpenAI's request that kakumei reads; others (quality, style, user, ...)
    are hints without a kakumei equivalent and are ignored, as OpenAI ignores them per model."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    size: str | None = Field(None, description="WIDTHxHEIGHT in multiples of 8; auto or absent: 512x512")
    response_format: str | None = Field(None, description="url (default) or b64_json")
    output_format: str | None = Field(None, description="png only")


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "invalid_request_error", 429: "rate_limit_error"}.get(status, "invalid_request_error")
    if status >= 500:
        kind = "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _generation_request(body: ImagesGenerate, known_models: list[str]) -> GenerationRequest:
    model = None if body.model in (None, "", *OPENAI_MODELS) else body.model
    if model is not None and model not in known_models:
        raise _Refused(f"unknown model {model!r}; known: {', '.join(known_models)} (or leave model out)", "model")
    values: dict[str, Any] = {"prompt": body.prompt, "model": model}
    if body.size not in (None, "", "auto"):
        match = _SIZE.match(body.size)
        if match is None:
            raise _Refused(f"size must look like 512x512, got {body.size!r}", "size")
        values["width"], values["height"] = int(match[1]), int(match[2])
    if body.output_format not in (None, "png"):
        raise _Refused(f"output_format {body.output_format!r} is not available; kakumei makes PNG", "output_format")
    # Up to MAX_BATCH_SIZE images in one batch, more as batches of one.
    if body.n <= MAX_BATCH_SIZE:
        values["batch_size"] = body.n
    else:
        values["n_iter"] = body.n
    return GenerationRequest(**values)


class _Refused(Exception):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


@router.post("/images/generations")
async def images_generations(request: Request) -> JSONResponse:
    """Generate `n` images for `prompt`; waits for the job, then answers
    {"created", "data": [{"url"} or {"b64_json"}, ...]}."""
    svc = services(request)
    try:
        who = await to_thread.run_sync(caller, request)
    except HTTPException as exc:
        return _error(exc.status_code, str(exc.detail), code="invalid_api_key" if exc.status_code == 401 else None)
    # 1. read and check the request
    try:
        raw = await request.json()
        body = ImagesGenerate.model_validate(raw)
    except json.JSONDecodeError:
        return _error(400, "the request body is not valid JSON")
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        return _error(400, validation_message(exc), str(first[0]) if first else None)
    if body.response_format not in (None, "url", "b64_json"):
        return _error(400, f"response_format must be url or b64_json, got {body.response_format!r}", "response_format")
    try:
        gen = _generation_request(body, svc.known_models())
    except _Refused as exc:
        return _error(400, str(exc), exc.param)
    except ValidationError as exc:
        return _error(400, validation_message(exc))
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
