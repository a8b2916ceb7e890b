"""The OpenAI Images API's request, and its mapping onto a GenerationRequest, as a pure
function: routes/openai.py reads the HTTP request, calls this, and renders the answer.

OpenAI's own model names mean "the server's default model"; `n` images are one batch up to
MAX_BATCH_SIZE, more are batches of one.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kakumei.errors import KakumeiError
from kakumei.schemas import MAX_BATCH_SIZE, GenerationRequest

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


class Refused(KakumeiError):
    """A field kakumei cannot honour; `param` names it, as OpenAI's error bodies do."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def to_generation_request(body: ImagesGenerate, known_models: list[str]) -> GenerationRequest:
    """The kakumei request for an OpenAI one. Raises Refused for a field kakumei cannot honour,
    or pydantic's ValidationError for values GenerationRequest does not accept."""
    if body.response_format not in (None, "url", "b64_json"):
        raise Refused(f"response_format must be url or b64_json, got {body.response_format!r}", "response_format")
    model = None if body.model in (None, "", *OPENAI_MODELS) else body.model
    if model is not None and model not in known_models:
        raise Refused(f"unknown model {model!r}; known: {', '.join(known_models)} (or leave model out)", "model")
    values: dict[str, Any] = {"prompt": body.prompt, "model": model}
    if body.size not in (None, "", "auto"):
        match = _SIZE.match(body.size)
        if match is None:
            raise Refused(f"size must look like 512x512, got {body.size!r}", "size")
        values["width"], values["height"] = int(match[1]), int(match[2])
    if body.output_format not in (None, "png"):
        raise Refused(f"output_format {body.output_format!r} is not available; kakumei makes PNG", "output_format")
    if body.n <= MAX_BATCH_SIZE:
        values["batch_size"] = body.n
    else:
        values["n_iter"] = body.n
    return GenerationRequest(**values)
