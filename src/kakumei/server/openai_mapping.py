"""The OpenAI Images API's requests (generations, edits), and their mapping onto a
GenerationRequest, as pure functions: routes/openai.py reads the HTTP request, calls these,
and renders the answer.

OpenAI's own model names mean "the server's default model"; `n` images are one batch up to
MAX_BATCH_SIZE, more are batches of one. An edit is inpainting: OpenAI edits where the mask
(or, without one, the image itself) is fully transparent, which becomes kakumei's mask, white
where the image is repainted; an opaque image without a mask is edited whole (img2img).
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from kakumei.errors import KakumeiError
from kakumei.images import decode_image_b64
from kakumei.schemas import MAX_BATCH_SIZE, MAX_INPUT_BYTES, MAX_INPUT_PIXELS, GenerationRequest

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
    translate: bool = Field(True, description="kakumei's own: false sends Japanese in the prompt untranslated")


class Refused(KakumeiError):
    """A field kakumei cannot honour; `param` names it, as OpenAI's error bodies do."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


# kakumei's fields that OpenAI requests set, by the OpenAI parameter that sets them.
PARAM_OF_FIELD = {
    "prompt": "prompt", "model": "model", "width": "size", "height": "size", "batch_size": "n", "n_iter": "n",
    "init_images": "image", "mask": "mask",
}
# How much of the image an edit repaints: all of the transparent area; of an opaque image
# edited whole, what img2img's usual strength changes.
EDIT_MASKED_STRENGTH = 1.0
EDIT_WHOLE_STRENGTH = 0.75


def _values(body: ImagesGenerate, known_models: list[str]) -> dict[str, Any]:
    """The fields generations and edits share, checked."""
    if body.response_format not in (None, "url", "b64_json"):
        raise Refused(f"response_format must be url or b64_json, got {body.response_format!r}", "response_format")
    model = None if body.model in (None, "", *OPENAI_MODELS) else body.model
    if model is not None and model not in known_models:
        raise Refused(f"unknown model {model!r}; known: {', '.join(known_models)} (or leave model out)", "model")
    values: dict[str, Any] = {"prompt": body.prompt, "model": model, "translate": body.translate}
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
    return values


def to_generation_request(body: ImagesGenerate, known_models: list[str]) -> GenerationRequest:
    """The kakumei request for an OpenAI one. Raises Refused for a field kakumei cannot honour,
    or pydantic's ValidationError for values GenerationRequest does not accept."""
    return GenerationRequest(**_values(body, known_models))


def _decoded(data: bytes, param: str) -> Image.Image:
    try:
        return decode_image_b64(base64.b64encode(data).decode("ascii"), param, MAX_INPUT_PIXELS, MAX_INPUT_BYTES)
    except ValueError as exc:
        raise Refused(str(exc), param) from None


def _alpha(image: Image.Image) -> Image.Image | None:
    """The image's alpha channel, or None when it has none."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    return None


def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def to_edit_request(body: ImagesGenerate, image: bytes, mask: bytes | None, known_models: list[str]) -> GenerationRequest:
    """The kakumei request for an OpenAI edit of `image` (the uploaded file's bytes), with
    `mask` where given. Raises Refused (with the field: image, mask, ...) or ValidationError."""
    values = _values(body, known_models)
    # 1. the image, and where it is to be edited: alpha 0 in the mask, else in the image
    picture = _decoded(image, "image")
    if mask is not None:
        shape = _decoded(mask, "mask")
        if shape.size != picture.size:
            raise Refused(
                f"the mask is {shape.size[0]}x{shape.size[1]} but the image is {picture.size[0]}x{picture.size[1]}; "
                "they must be the same size", "mask"
            )
        alpha = _alpha(shape)
        if alpha is None:
            raise Refused("the mask must be a PNG with an alpha channel: its fully transparent areas are edited", "mask")
        if alpha.getextrema()[0] > 0:
            raise Refused("the mask has no fully transparent pixel, so there is nothing to edit", "mask")
    else:
        alpha = _alpha(picture)
        if alpha is not None and alpha.getextrema()[0] > 0:
            alpha = None  # an opaque image: edited whole
    # 2. kakumei's mask: white (repainted) where OpenAI's is fully transparent
    if alpha is not None:
        values["mask"] = _png_b64(alpha.point(lambda a: 255 if a == 0 else 0))
        values["denoising_strength"] = EDIT_MASKED_STRENGTH
    else:
        values["denoising_strength"] = EDIT_WHOLE_STRENGTH
    values["init_images"] = [_png_b64(picture.convert("RGB"))]
    # 3. the answer's size: `size`, else the image's own, down to a multiple of 8
    if "width" not in values:
        values["width"], values["height"] = (max(8, side - side % 8) for side in picture.size)
    return GenerationRequest(**values)


def edit_form_documented() -> dict[str, Any]:
    """`openapi_extra` for /v1/images/edits: its multipart form, as OpenAI documents it."""
    fields = ImagesGenerate.model_json_schema()["properties"]
    binary = {"type": "string", "format": "binary"}
    schema = {
        "type": "object",
        "required": ["image", "prompt"],
        "properties": {
            "image": {**binary, "description": "the PNG to edit; its fully transparent areas are edited when no mask is sent"},
            "mask": {**binary, "description": "a PNG of the image's size whose fully transparent areas are edited"},
            **fields,
            "user": {"type": "string", "description": "ignored"},
        },
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
