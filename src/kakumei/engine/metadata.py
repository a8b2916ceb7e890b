"""PNG metadata: tEXt/iTXt `parameters` in AUTOMATIC1111 infotext format, and iTXt
`kakumei` with the full request as JSON, the model's sha256 and library versions.

Nothing time-dependent goes into the PNG, so the same request and seed give the same bytes.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from kakumei.errors import InvalidRequest, MetadataNotFound
from kakumei.schemas import GenerationRequest

KAKUMEI_KEY = "kakumei"
PARAMETERS_KEY = "parameters"
METADATA_VERSION = 1


def _fmt_number(value: float) -> str:
    """A1111 prints 7.0 as 7 and 7.5 as 7.5."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _quote(value: str) -> str:
    # A1111 quotes values that contain its separators.
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:\n"') else value


def build_infotext(
    request: GenerationRequest,
    seed: int,
    model_name: str,
    model_hash: str,
    version: str,
    extra: dict[str, str] | None = None,
) -> str:
    """The `parameters` text AUTOMATIC1111 writes, for one image."""
    fields: dict[str, str] = {
        "Steps": str(request.steps),
        "Sampler": request.sampler_name,
        "Schedule type": request.scheduler,
        "CFG scale": _fmt_number(request.cfg_scale),
        "Seed": str(seed),
        "Size": f"{request.width}x{request.height}",
        "Model hash": model_hash,
        "Model": model_name,
    }
    if request.clip_skip > 1:
        fields["Clip skip"] = str(request.clip_skip)
    fields.update(extra or {})
    fields["Version"] = version
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields.items()))
    return "\n".join(lines)


# `key: value` pairs of the last line; values may be JSON-quoted (same regex idea as A1111).
_PAIR = re.compile(r'\s*([\w ,+\-/().]+?):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse A1111 infotext into {"prompt", "negative_prompt", <field>: <str>, ...}."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    fields: dict[str, Any] = {}
    if len(_PAIR.findall(last)) >= 3:
        for key, value in _PAIR.findall(last):
            value = value.strip()
            if value.startswith('"') and value.endswith('"'):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            fields[key.strip()] = value
        lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].strip()
        target.append(line)
    fields["prompt"] = "\n".join(prompt_lines)
    fields["negative_prompt"] = "\n".join(negative_lines)
    return fields


def request_from_infotext(fields: dict[str, Any]) -> GenerationRequest:
    """Map parsed infotext onto a GenerationRequest (one image at the recorded seed)."""
    values: dict[str, Any] = {"prompt": fields.get("prompt", ""), "negative_prompt": fields.get("negative_prompt", "")}
    simple = {"Steps": ("steps", int), "CFG scale": ("cfg_scale", float), "Seed": ("seed", int), "Clip skip": ("clip_skip", int)}
    try:
        for key, (name, conv) in simple.items():
            if key in fields:
                values[name] = conv(fields[key])
        if "Size" in fields:
            w, h = str(fields["Size"]).lower().split("x")
            values["width"], values["height"] = int(w), int(h)
    except ValueError as exc:
        raise InvalidRequest(f"the image's parameters cannot be read: {exc}") from None
    if "Sampler" in fields:
        values["sampler_name"] = fields["Sampler"]
    if "Schedule type" in fields:
        values["scheduler"] = fields["Schedule type"]
    return GenerationRequest(**values)


def encode_png(image: Image.Image, parameters: str, kakumei: dict[str, Any]) -> bytes:
    info = PngImagePlugin.PngInfo()
    # add_text falls back to iTXt when the text is not Latin-1, as A1111's writer does.
    info.add_text(PARAMETERS_KEY, parameters)
    info.add_itxt(KAKUMEI_KEY, json.dumps(kakumei, ensure_ascii=False, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


@dataclass(frozen=True)
class ImageMetadata:
    parameters: str | None
    kakumei: dict[str, Any] | None

    def request_and_index(self) -> tuple[GenerationRequest, int]:
        """The request that made this image and the image's index within it.

        Regenerating that index's whole batch (Engine.generate(only_batch=...)) is exact;
        one image alone would not be, as batched and single inference differ in the last bits.
        """
        if self.kakumei is not None:
            data = self.kakumei
            if data.get("inputs"):
                raise MetadataNotFound(
                    "this image was made from an input image (img2img or inpainting), which PNG metadata does not "
                    "carry; regenerate it with the same request and its init image"
                )
            try:
                request = GenerationRequest(**data["request"])
                index = int(data.get("image_index", 0))
            except (KeyError, TypeError, ValueError) as exc:
                raise MetadataNotFound(f"the image's kakumei metadata is damaged: {exc}") from None
            if not 0 <= index < request.image_count:
                raise MetadataNotFound(f"the image's kakumei metadata is damaged: image_index {index} out of range")
            return request, index
        if self.parameters is not None:
            return request_from_infotext(parse_infotext(self.parameters)), 0
        raise MetadataNotFound("no generation metadata")


def read_metadata(source: str | Path | bytes) -> ImageMetadata:
    """Read kakumei/A1111 metadata from a PNG path or bytes."""
    name = "the image" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            text = dict(getattr(img, "text", {}) or {})
    except FileNotFoundError:
        raise MetadataNotFound(f"{name} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise MetadataNotFound(f"{name} is not an image kakumei can read") from None
    kakumei = None
    if KAKUMEI_KEY in text:
        try:
            kakumei = json.loads(text[KAKUMEI_KEY])
        except json.JSONDecodeError:
            kakumei = None
    parameters = text.get(PARAMETERS_KEY)
    if kakumei is None and not parameters:
        raise MetadataNotFound(
            f"{name} carries no generation metadata (no 'parameters' or 'kakumei' text chunk); "
            "only PNGs written by kakumei or AUTOMATIC1111 can be regenerated"
        )
    return ImageMetadata(parameters=parameters, kakumei=kakumei)
