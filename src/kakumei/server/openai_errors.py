"""Errors in OpenAI's shape on every /v1 path: {"error": {"message", "type", "param", "code"}}.

The OpenAI SDKs parse that body into their exceptions, so everything that can answer a /v1
request uses it: the routes themselves, and the shared machinery (body limits, unknown paths,
methods, validation and authentication errors) through `http_error`, which keeps the native
shape ({"detail": ...}) everywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

OPENAI_PREFIX = "/v1"

# OpenAI's `code` for the statuses that have one whatever the route.
_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 415: "unsupported_media_type"}


def is_openai_path(path: str) -> bool:
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error"


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code or _CODES.get(status)}}


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=dict(headers or {}))


def param_of(loc: Sequence[Any]) -> str | None:
    """The request field a validation error's location names ("body", "query" and list
    positions left out): `("body", "n")` -> "n"."""
    names = [str(part) for part in loc if not isinstance(part, int)]
    if names and names[0] in ("body", "query", "path", "header"):
        names = names[1:]
    return names[0] if names else None


async def http_error(request: Request, exc: HTTPException) -> Response:
    """An HTTPException in OpenAI's shape on /v1, and as FastAPI renders it elsewhere."""
    if not is_openai_path(request.url.path):
        return await http_exception_handler(request, exc)
    return openai_error(exc.status_code, str(exc.detail), headers=exc.headers)


def validation_error(path: str, errors: list[dict[str, str]], message: str) -> JSONResponse | None:
    """A 422 in OpenAI's shape on /v1 (None elsewhere): `errors` as app.py's handler lists
    them, the first one's field as `param`."""
    if not is_openai_path(path):
        return None
    field = errors[0]["field"] if errors else None
    param = None if field in (None, "body") else field.split(".")[0].split("[")[0]
    return openai_error(422, message, param)
