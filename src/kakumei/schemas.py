"""Pydantic models shared by every layer: the engine, the CLI, the server, workers, APIs.

Field names follow AUTOMATIC1111 so that its clients map onto them one to one.
Validation happens here, once, with messages that say what is allowed.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kakumei.errors import InvalidRequest
from kakumei.images import b64decode_strict, declared_size_b64, decode_image_b64, is_standard_b64
from kakumei.prompt_schedule import has_schedule

# A1111 sampler names -> whether the sampler takes a sigma schedule (Karras, ...).
# The diffusers classes behind them live in engine/samplers.py; this table is pure data so
# that the server can validate requests without importing torch.
SAMPLERS: dict[str, bool] = {
    "Euler": True,
    "Euler a": False,
    "Heun": True,
    "LMS": True,
    "DPM++ 2M": True,
    "DPM++ 2M SDE": True,
    "DPM++ 3M SDE": True,
    "DPM++ SDE": True,
    "DPM++ 2S a": False,
    "DPM2": True,
    "DPM2 a": True,
    "DDIM": False,
    "PLMS": False,
    "UniPC": True,
    "LCM": False,
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# Schedules: "Automatic" keeps the sampler's own; "SGM Uniform" is trailing timestep spacing
# and applies to every sampler; the sigma schedules apply where SAMPLERS says True.
SCHEDULE_NAMES: tuple[str, ...] = ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Beta")
SIGMA_SCHEDULES = frozenset({"Karras", "Exponential", "Beta"})

# Fields that must agree for requests to share a batch: they shape the denoising loop.
BATCH_FIELDS = ("width", "height", "steps", "sampler_name", "scheduler", "clip_skip")

MAX_SIDE = 2048
MIN_SIDE = 64
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_N_ITER = 100
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 10_000
# Input images (img2img, inpainting masks) may be larger than the output, but not without
# bound: a small PNG can declare a huge canvas (a "decompression bomb").
MAX_INPUT_PIXELS = 4096 * 4096
MAX_INPUT_BYTES = 32 * 1024 * 1024
MAX_INIT_IMAGES = MAX_BATCH_SIZE
# All input images of one request together (init images and mask, by the sizes their headers
# declare, before any is decoded): decoding eight full-size inputs would hold a server thread
# for seconds and its memory by gigabytes. Four inputs of the largest size, or eight of twice
# the largest output size, fit.
MAX_REQUEST_INPUT_PIXELS = 4 * MAX_INPUT_PIXELS
# An input image stored once by content: "sha256:" + the sha256 of the image file's bytes.
# Stored jobs carry these instead of base64, so reading a job decodes no image.
INPUT_REF_PREFIX = "sha256:"
_INPUT_REF = re.compile(r"sha256:[0-9a-f]{64}")
# A1111's img2img resize modes, by number.
RESIZE_MODES: tuple[str, ...] = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
# A1111's "masked content" choices, by number.
INPAINTING_FILLS: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")
# Hires fix upscalers: latent ones interpolate the latents, the others resize pixels.
HR_UPSCALERS: tuple[str, ...] = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
    "Lanczos",
    "Nearest",
    "None",
)


# Control characters (C0 and DEL) are refused in free text at the edge: PostgreSQL cannot
# store NUL in a text column at all (the job's infotext would fail to store, on a worker, long
# after the submission was accepted), and the others garble logs, terminals and infotexts.
# Prompts keep tab, line feed and carriage return: A1111 prompts often span lines. Names and
# other one-line values keep none.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Validation context for a request read back from the store (or a lease made of one): it was
# checked when it was submitted, and a job queued by an earlier version that let control
# characters in must stay readable (and fail on its own when it runs, not fail every list).
STORED: dict[str, Any] = {"stored": True}


def refuse_control(value: str, *, multiline: bool = False) -> str:
    """`value`, or ValueError naming the first control character in it (with `multiline`,
    tabs and line breaks are allowed)."""
    match = (_CONTROL_IN_TEXT if multiline else _CONTROL).search(value)
    if match is not None:
        allowed = "tabs and line breaks are allowed, no other" if multiline else "none is allowed"
        raise ValueError(
            f"contains the control character U+{ord(match.group()):04X} at position {match.start()}; {allowed}"
        )
    return value


def _one_line(value: str) -> str:
    return refuse_control(value)


def _text(value: str) -> str:
    return refuse_control(value, multiline=True)


# A name or other one-line value from outside: no control character at all.
OneLine = Annotated[str, AfterValidator(_one_line)]
# Free text from outside (a reason, an infotext): tabs and line breaks allowed.
Text = Annotated[str, AfterValidator(_text)]


def _is_stored(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("stored"))


def _legacy_sampler_split(name: str) -> tuple[str, str | None]:
    """A1111 before 1.9 folded the schedule into the sampler name ("DPM++ 2M Karras")."""
    for schedule in ("Karras", "Exponential"):
        suffix = f" {schedule}"
        if name.endswith(suffix) and name[: -len(suffix)] in SAMPLERS:
            return name[: -len(suffix)], schedule
    return name, None


# The JSON schema states what the validators below check, so that clients (and the OpenAPI
# document) know the allowed values; the validators keep their own readable messages.
SIDE_SCHEMA: dict[str, Any] = {"multipleOf": 8, "minimum": MIN_SIDE, "maximum": MAX_SIDE}
SAMPLER_SCHEMA: dict[str, Any] = {
    # with the names A1111 before 1.9 folded a schedule into ("DPM++ 2M Karras")
    "enum": [*SAMPLER_NAMES, *(f"{name} {schedule}" for name, sigmas in SAMPLERS.items() if sigmas for schedule in ("Karras", "Exponential"))]
}
SCHEDULE_SCHEMA: dict[str, Any] = {"enum": list(SCHEDULE_NAMES)}


def is_input_ref(value: str) -> bool:
    """Whether an init image or mask value is a stored image's reference (not base64)."""
    return value.startswith(INPUT_REF_PREFIX)


def input_ref(raw: bytes) -> str:
    """The reference of an image file: its bytes' sha256, so one image is stored once."""
    return INPUT_REF_PREFIX + hashlib.sha256(raw).hexdigest()


def as_input_ref(value: str) -> str:
    """A validated input value (a reference, or base64 with or without a data: URL prefix)
    as a reference."""
    if is_input_ref(value):
        return value
    text = value.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    return input_ref(b64decode_strict(text))


def _declared_pixels(values: list[str]) -> int:
    """Pixels the base64 inputs among `values` declare (references and unreadable data count
    nothing: the first were checked when stored, the second are refused by _check_input)."""
    total = 0
    for value in values:
        size = None if is_input_ref(value) else declared_size_b64(value)
        if size is not None:
            total += size[0] * size[1]
    return total


def _check_request_pixels(total: int, what: str) -> None:
    if total > MAX_REQUEST_INPUT_PIXELS:
        raise ValueError(
            f"{what} {total:,} pixels; at most {MAX_REQUEST_INPUT_PIXELS:,} pixels of input images are accepted "
            "per request (send fewer or smaller images)"
        )


def _check_input(value: str, field: str) -> None:
    """A reference needs only its form checked (its image was checked when it was
    submitted); base64 is decoded and checked in full."""
    if is_input_ref(value):
        if not _INPUT_REF.fullmatch(value):
            raise ValueError(f"{field} is not a stored image reference (sha256: and 64 lowercase hex digits)")
        return
    decode_image_b64(value, field, MAX_INPUT_PIXELS, MAX_INPUT_BYTES)


# GenerationRequest's fields whose validation decodes images (_check_input): a body that
# fills none of them validates in microseconds (server/bodies.py json_body's `decoding`).
IMAGE_FIELDS = ("init_images", "mask")


class GenerationRequest(BaseModel):
    """One text-to-image request, as every layer of kakumei sees it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    steps: int = Field(20, description=f"denoising steps, 1 to {MAX_STEPS}")
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    width: int = Field(512, description=f"multiple of 8, {MIN_SIDE} to {MAX_SIDE}", json_schema_extra=SIDE_SCHEMA)
    height: int = Field(512, description=f"multiple of 8, {MIN_SIDE} to {MAX_SIDE}", json_schema_extra=SIDE_SCHEMA)
    seed: int = Field(-1, description="-1 picks a random seed, which is then recorded")
    batch_size: int = Field(1, description=f"images per batch, 1 to {MAX_BATCH_SIZE}")
    n_iter: int = Field(1, description=f"number of batches, 1 to {MAX_N_ITER}; image i uses seed + i")
    sampler_name: str = Field("Euler a", description="an AUTOMATIC1111 sampler name", json_schema_extra=SAMPLER_SCHEMA)
    scheduler: str = Field("Automatic", description="an AUTOMATIC1111 schedule type", json_schema_extra=SCHEDULE_SCHEMA)
    clip_skip: int = Field(1, ge=1, le=12, description="1 uses the last CLIP layer, 2 the one before, ...")
    model: str | None = Field(None, description="model reference; None means the configured default")

    # img2img and inpainting (A1111 names). Images travel as base64 PNG/JPEG/WebP strings
    # (a data: URL prefix is accepted), so a request stays JSON.
    init_images: list[str] = Field(
        default_factory=list, description=f"base64 images for img2img, at most {MAX_INIT_IMAGES}; image i uses init_images[i % n]"
    )
    denoising_strength: float = Field(
        0.75, ge=0.0, le=1.0, description="img2img and hires fix: 0 keeps the input, 1 replaces it"
    )
    resize_mode: int = Field(0, description="; ".join(f"{i}: {n}" for i, n in enumerate(RESIZE_MODES)))
    mask: str | None = Field(None, description="base64 mask for inpainting: white is repainted, black kept")
    mask_blur: int = Field(4, ge=0, le=64, description="pixels of Gaussian blur on the mask edge")
    inpainting_fill: int = Field(1, description="; ".join(f"{i}: {n}" for i, n in enumerate(INPAINTING_FILLS)))
    inpaint_full_res: bool = Field(False, description="'only masked': repaint the masked area at full resolution")
    inpaint_full_res_padding: int = Field(32, ge=0, le=256, description="pixels around the mask for 'only masked'")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1 repaints the black part of the mask instead")

    # Hires fix (txt2img only): generate at width x height, upscale, second pass.
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1.0, le=4.0)
    hr_upscaler: str = Field("Latent", description=f"one of: {', '.join(HR_UPSCALERS)}")
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS, description="0 uses steps")

    # SDXL refiner: the base model stops at refiner_switch_at of the steps, the refiner finishes.
    refiner_checkpoint: str | None = Field(None, description="model reference of an SDXL refiner")
    refiner_switch_at: float = Field(0.8, gt=0.0, lt=1.0)

    # A cancel keeps the images finished before it; A1111's interrupt also answers with the
    # batch it stopped, as far as its denoising got, so its clients always get an image.
    keep_interrupted: bool = Field(
        False, description="on cancel, also keep the stopped batch's images, partly denoised (A1111's interrupt)"
    )

    # Japanese prompts (kakumei.translate): `prompt` and `negative_prompt` are what is encoded;
    # where kakumei translated them, what was written is kept here, and the job, the API
    # answers and the PNG's kakumei JSON carry both.
    translate: bool = Field(True, description="translate Japanese in the prompts to English before encoding; false sends them as written")
    prompt_original: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="the prompt as written, where `prompt` is its English translation"
    )
    negative_prompt_original: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="the negative prompt as written, where `negative_prompt` is its translation"
    )
    untranslated: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=200, description="words no dictionary knew, kept as written in the English"
    )

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _plain_text(cls, v: str, info: ValidationInfo) -> str:
        return v if _is_stored(info) else refuse_control(v, multiline=True)

    @field_validator("prompt_original", "negative_prompt_original")
    @classmethod
    def _plain_original(cls, v: str | None, info: ValidationInfo) -> str | None:
        return v if v is None or _is_stored(info) else refuse_control(v, multiline=True)

    @field_validator("untranslated")
    @classmethod
    def _plain_words(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return v if _is_stored(info) else [refuse_control(w) for w in v]

    def untouched_translation_fields(self) -> set[str]:
        """The translation fields at their defaults: left out of a PNG's metadata, so that an
        image of an English prompt records what it recorded before translation existed."""
        defaults = {"translate": True, "prompt_original": None, "negative_prompt_original": None, "untranslated": []}
        return {name for name, value in defaults.items() if getattr(self, name) == value}

    @field_validator("model", "refiner_checkpoint")
    @classmethod
    def _plain_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        return v if v is None or _is_stored(info) else refuse_control(v)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if not 1 <= v <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {v}")
        return v

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int) -> int:
        if v % 8 != 0:
            raise ValueError(f"must be a multiple of 8 (e.g. {max(MIN_SIDE, v - v % 8)}), got {v}")
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise ValueError(f"must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {v}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v != -1 and not 0 <= v <= MAX_SEED:
            raise ValueError(f"seed must be -1 (random) or between 0 and {MAX_SEED}, got {v}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if not 1 <= v <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {v}")
        return v

    @field_validator("n_iter")
    @classmethod
    def _n_iter(cls, v: int) -> int:
        if not 1 <= v <= MAX_N_ITER:
            raise ValueError(f"n_iter must be between 1 and {MAX_N_ITER}, got {v}")
        return v

    @field_validator("resize_mode")
    @classmethod
    def _resize_mode(cls, v: int) -> int:
        if not 0 <= v < len(RESIZE_MODES):
            known = ", ".join(f"{i} ({n})" for i, n in enumerate(RESIZE_MODES))
            raise ValueError(f"resize_mode must be one of {known}, got {v}")
        return v

    @field_validator("inpainting_fill")
    @classmethod
    def _inpainting_fill(cls, v: int) -> int:
        if not 0 <= v < len(INPAINTING_FILLS):
            known = ", ".join(f"{i} ({n})" for i, n in enumerate(INPAINTING_FILLS))
            raise ValueError(f"inpainting_fill must be one of {known}, got {v}")
        return v

    @field_validator("hr_upscaler")
    @classmethod
    def _hr_upscaler(cls, v: str) -> str:
        if v not in HR_UPSCALERS:
            raise ValueError(f"unknown hires upscaler {v!r}; known: {', '.join(HR_UPSCALERS)}")
        return v

    @field_validator("init_images")
    @classmethod
    def _init_images(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_INIT_IMAGES:
            raise ValueError(f"init_images may hold at most {MAX_INIT_IMAGES} images, got {len(v)}")
        _check_request_pixels(_declared_pixels(v), "the init images are")
        for i, data in enumerate(v):
            _check_input(data, f"init_images[{i}]")
        return v

    @field_validator("mask")
    @classmethod
    def _mask(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            init_images = info.data.get("init_images") or []
            _check_request_pixels(_declared_pixels([*init_images, v]), "with the init images, the input images are")
            _check_input(v, "mask")
        return v

    @model_validator(mode="after")
    def _modes(self) -> GenerationRequest:
        if self.mask is not None:
            if not self.init_images:
                raise ValueError("a mask needs an image to inpaint: give init_images as well")
            # Sizes are compared where the images arrive as base64 (a submission); a stored
            # request names its images by reference and was checked when it was submitted.
            if not is_input_ref(self.mask):
                # The field validators decoded each image in full; their headers suffice here.
                mask_size = declared_size_b64(self.mask)
                for i, data in enumerate(self.init_images):
                    if is_input_ref(data):
                        continue
                    size = declared_size_b64(data)
                    if mask_size is not None and size is not None and size != mask_size:
                        raise ValueError(
                            f"the mask is {mask_size[0]}x{mask_size[1]} but init_images[{i}] is {size[0]}x{size[1]}; "
                            "a mask must have the size of the image it masks"
                        )
        if self.enable_hr:
            if self.init_images:
                raise ValueError("hires fix (enable_hr) is for text-to-image; img2img already works at full size")
            for side, name in ((self.width, "width"), (self.height, "height")):
                if int(side * self.hr_scale) > MAX_SIDE:
                    raise ValueError(
                        f"hires fix would make the {name} {int(side * self.hr_scale)} pixels; at most {MAX_SIDE} "
                        f"(lower hr_scale to {MAX_SIDE / side:.2f} or less)"
                    )
        return self

    @property
    def mode(self) -> str:
        """"txt2img", "img2img" or "inpaint"."""
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.init_images else "txt2img"

    @property
    def hr_size(self) -> tuple[int, int]:
        """Hires fix output size: the scaled size, down to a multiple of 8."""
        return int(self.width * self.hr_scale) // 8 * 8, int(self.height * self.hr_scale) // 8 * 8

    @model_validator(mode="before")
    @classmethod
    def _split_legacy_sampler(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sampler_name"), str):
            sampler, schedule = _legacy_sampler_split(data["sampler_name"])
            if schedule is not None and data.get("scheduler") in (None, "Automatic"):
                data = {**data, "sampler_name": sampler, "scheduler": schedule}
        return data

    @field_validator("sampler_name")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        # A field validator (after the legacy split above), so the error names sampler_name.
        if v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; known: {', '.join(SAMPLER_NAMES)}")
        return v

    @field_validator("scheduler")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        if v not in SCHEDULE_NAMES:
            raise ValueError(f"unknown schedule {v!r}; known: {', '.join(SCHEDULE_NAMES)}")
        return v

    @model_validator(mode="after")
    def _sampler_and_schedule(self) -> GenerationRequest:
        if self.scheduler in SIGMA_SCHEDULES and not SAMPLERS[self.sampler_name]:
            usable = [n for n, sig in SAMPLERS.items() if sig]
            raise ValueError(
                f"schedule {self.scheduler!r} does not apply to sampler {self.sampler_name!r}; "
                f"use it with one of: {', '.join(usable)}"
            )
        return self

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter

    def batch_key(self, model: str | None = None) -> str | None:
        """Requests with equal keys can share one batch (each keeping its own prompt, negative
        prompt, CFG scale and seed); None when this request must run alone (img2img,
        inpainting, hires fix, refiner, several batches, LoRA tags merged into weights,
        prompt editing or alternation)."""
        if self.mode != "txt2img" or self.enable_hr or self.refiner_checkpoint or self.n_iter != 1:
            return None
        if "<lora:" in self.prompt or "<lora:" in self.negative_prompt:
            return None
        if has_schedule(self.prompt) or has_schedule(self.negative_prompt):
            return None  # its prompt encodings change during the loop ([from:to:when], [a|b])
        fields = [model or self.model or "", *(str(getattr(self, f)) for f in BATCH_FIELDS)]
        return hashlib.sha256("\0".join(fields).encode("utf-8")).hexdigest()[:32]

    # -- input images by reference ---------------------------------------------------------

    def input_refs(self) -> list[str]:
        """The references among the input images (init images, then the mask), each once."""
        values = [*self.init_images, *([self.mask] if self.mask is not None else [])]
        return list(dict.fromkeys(v for v in values if is_input_ref(v)))

    def stored_form(self) -> tuple[GenerationRequest, dict[str, bytes]]:
        """This request as a job row keeps it, and the image files it no longer carries.

        Each base64 input becomes the reference of its file's bytes. One whose base64 text is
        not exactly the standard encoding of those bytes (a data: URL prefix, surrounding
        whitespace) stays inline: the engine records the sha256 of the text it is given, and
        a reference resolves to the standard encoding, so the image's metadata would change.
        """
        files: dict[str, bytes] = {}

        def stored(value: str) -> str:
            if is_input_ref(value):
                return value
            try:
                raw = b64decode_strict(value)
            except (binascii.Error, ValueError):
                return value
            if not is_standard_b64(raw, value):
                return value
            ref = input_ref(raw)
            files[ref] = raw
            return ref

        update: dict[str, Any] = {"init_images": [stored(v) for v in self.init_images]}
        if self.mask is not None:
            update["mask"] = stored(self.mask)
        return self.model_copy(update=update), files

    def with_inputs(self, images: Mapping[str, str]) -> GenerationRequest:
        """This request with each reference replaced by its base64 image from `images`
        (ref -> base64, as InputStore.get_many answers); no image is decoded again."""
        refs = self.input_refs()
        if not refs:
            return self
        missing = [r for r in refs if r not in images]
        if missing:
            raise KeyError(f"no stored input image {', '.join(missing)}")
        update: dict[str, Any] = {"init_images": [images[v] if is_input_ref(v) else v for v in self.init_images]}
        if self.mask is not None and is_input_ref(self.mask):
            update["mask"] = images[self.mask]
        return self.model_copy(update=update)

    def referenced(self) -> GenerationRequest:
        """This request with every input image as a reference: what job lists show, without
        the image data (an inline input is hashed here, not decoded as an image)."""
        if all(is_input_ref(v) for v in [*self.init_images, *([self.mask] if self.mask is not None else [])]):
            return self
        update: dict[str, Any] = {"init_images": [as_input_ref(v) for v in self.init_images]}
        if self.mask is not None:
            update["mask"] = as_input_ref(self.mask)
        return self.model_copy(update=update)


def validate_request(data: dict[str, Any]) -> GenerationRequest:
    """Build a request from untrusted data, turning pydantic errors into InvalidRequest."""
    try:
        return GenerationRequest(**data)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from None


def check_request(request: GenerationRequest) -> None:
    """Refuse combinations of fields that no model can run, with what would work instead.

    Not part of GenerationRequest's own validation: queued jobs are read back through it, so
    a job accepted by an earlier version must stay readable; the engine checks this when it
    runs a request (with the checks that need the loaded model, engine/plan.py).
    """
    if request.mode != "txt2img" or request.enable_hr:
        steps = request.hr_second_pass_steps or request.steps if request.enable_hr else request.steps
        if int(steps * request.denoising_strength) < 1:
            # diffusers runs steps x strength steps, as A1111 does; zero steps would return noise.
            need = math.ceil(1 / request.denoising_strength) if request.denoising_strength > 0 else None
            hint = f"raise steps to {need} or more" if need and need <= MAX_STEPS else "raise denoising_strength"
            raise InvalidRequest(
                f"denoising_strength {request.denoising_strength:g} with {steps} steps leaves no denoising step "
                f"(steps x strength < 1); {hint}"
            )
    if request.mode == "inpaint" and request.inpaint_full_res and len(request.init_images) > 1 and request.batch_size > 1:
        raise InvalidRequest("'only masked' inpainting (inpaint_full_res) takes one init image per batch; use batch_size 1")
    if request.refiner_checkpoint and (request.mode != "txt2img" or request.enable_hr):
        raise InvalidRequest("the refiner applies to text-to-image without hires fix in this version of kakumei")


_PREDICATES = ("must ", "is ", "may ", "needs ", "has ", "should ", "cannot ", "contains ", "holds ", "does ", "takes ")
# Locations that say where a value came from, not which field it is.
_LOC_SOURCES = frozenset({"body", "query", "header", "path", "__root__"})


def _given(value: Any) -> str:
    """The value a field was given, when it is a number or a flag. Text is never repeated: it
    may be a password, an invite code or a key sent in the wrong field."""
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return ""


def error_field(err: Mapping[str, Any]) -> str:
    """The field a pydantic (or FastAPI) error is about: "cfg_scale", "init_images.0", or ""."""
    loc = err.get("loc", ())
    if err.get("type") == "json_invalid":
        return ""
    return ".".join(str(p) for p in loc if p not in _LOC_SOURCES)


def error_sentence(err: Mapping[str, Any]) -> str:
    """One error as a sentence for a person: the field, what is allowed, and the value given
    ("cfg_scale must be at most 30, got 99"). Every surface (CLI, native API, A1111, OpenAI)
    words its errors with this, so one mistake reads the same everywhere."""
    field = error_field(err)
    kind = str(err.get("type", ""))
    ctx = {k: _given(v) if isinstance(v, (int, float)) else v for k, v in (err.get("ctx") or {}).items()}
    given = _given(err.get("input")) if "input" in err else ""
    got = f", got {given}" if given else ""
    known = {
        "less_than_equal": lambda: f"must be at most {ctx.get('le')}{got}",
        "greater_than_equal": lambda: f"must be at least {ctx.get('ge')}{got}",
        "less_than": lambda: f"must be below {ctx.get('lt')}{got}",
        "greater_than": lambda: f"must be above {ctx.get('gt')}{got}",
        "multiple_of": lambda: f"must be a multiple of {ctx.get('multiple_of')}{got}",
        "int_parsing": lambda: f"must be a whole number{got}",
        "int_type": lambda: f"must be a whole number{got}",
        "int_from_float": lambda: f"must be a whole number{got}",
        "float_parsing": lambda: f"must be a number{got}",
        "float_type": lambda: f"must be a number{got}",
        "bool_parsing": lambda: f"must be true or false{got}",
        "bool_type": lambda: f"must be true or false{got}",
        "string_type": lambda: f"must be text{got}",
        "list_type": lambda: f"must be a list{got}",
        "dict_type": lambda: "must be a JSON object",
        "model_type": lambda: "must be a JSON object",
        "model_attributes_type": lambda: "must be a JSON object",
        "missing": lambda: "is required",
        "extra_forbidden": lambda: "is not a field this accepts",
        "too_long": lambda: f"may hold at most {ctx.get('max_length')} items",
        "string_too_long": lambda: f"may be at most {ctx.get('max_length')} characters",
        "string_too_short": lambda: f"must be at least {ctx.get('min_length')} characters",
        "literal_error": lambda: f"must be {ctx.get('expected')}{got}",
        "enum": lambda: f"must be {ctx.get('expected')}{got}",
    }
    if kind == "json_invalid":
        reason = ctx.get("error")
        return "the body is not valid JSON" + (f" ({reason})" if reason else "") + ": send a UTF-8 JSON object"
    if kind in known:
        message = known[kind]()
    else:
        message = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    # A predicate ("must be ...") gets its field in front; a validator's whole sentence
    # ("steps must be between ...", "unknown sampler 'x'; known: ...") keeps its words, and
    # the field is still named beside it in the API's error list.
    if field and message.startswith(_PREDICATES):
        return f"{field} {message}"
    return message


def validation_message(exc: Exception) -> str:
    """One sentence from a pydantic ValidationError (or any exception)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    return "; ".join(error_sentence(err) for err in errors(include_url=False))
