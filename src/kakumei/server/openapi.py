"""What the OpenAPI document says about errors: the bodies this server really sends.

Every refusal is `{"detail": "sentence"}` (FastAPI's HTTPException handler, and `Refused`);
a malformed request is the 422 of app.py's `_validation_error`, not FastAPI's default
`HTTPValidationError`. Routes declare the statuses they answer with `problems(...)`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class Problem(BaseModel):
    """A refusal: one sentence saying what was wrong and what is allowed."""

    detail: str


class FieldProblem(BaseModel):
    field: str = Field(description="the field, dotted for nested ones (body when the whole body)")
    message: str


class ValidationProblem(BaseModel):
    """422: the request does not validate. `detail` joins the per-field messages."""

    detail: str
    errors: list[FieldProblem]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """A refusal on /v1 in OpenAI's shape, which the OpenAI SDKs parse into their exceptions."""

    error: OpenAIErrorBody


DESCRIPTIONS = {
    400: "the request cannot be run as asked, or its body cannot be parsed",
    401: "no API key, or one this server does not know",
    403: "not allowed: a worker key, a ban, or not an admin",
    404: "no such thing of yours",
    409: "conflicts with the current state",
    413: "the request body is too large",
    415: "the request body is not JSON",
    422: "the request does not validate",
    429: "too many jobs or requests; try again later",
    499: "the client went away; the job was cancelled",
    500: "the generation failed",
}


def problems(*statuses: int, model: Any = Problem) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that answers `statuses` with a sentence. A 422 declared here is
    either body: the route's own checks refuse with a sentence, validation with fields."""
    return {
        status: {"model": ValidationProblem | Problem if status == 422 and model is Problem else model,
                 "description": DESCRIPTIONS[status]}
        for status in statuses
    }


def install(app: FastAPI) -> None:
    """Make `app.openapi()` describe app.py's 422 body instead of FastAPI's default."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schemas = spec.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                definition = ValidationProblem.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, nested in definition.pop("$defs", {}).items():
                    schemas[name] = nested
                schemas["HTTPValidationError"] = {**definition, "title": "HTTPValidationError"}
                schemas.pop("ValidationError", None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
