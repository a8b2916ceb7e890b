"""Pure mapping between the AI Horde's v2 bodies and kakumei's request: no FastAPI, no store,
no torch, so that the server (server/horde/) and the worker (worker/horde.py) share it.

On the way in, what kakumei can honour becomes a `GenerationRequest`; what it cannot (a
sampler it lacks, post-processing, LoRAs by Horde name, styles, an NSFW filter it does not
have) raises `HordeError`, which the routes answer in the Horde's own error shape
(`{"message", "rc"}`, with the Horde's status codes). On the way out, a kakumei request becomes
the payload a Horde worker pops; `request_from_pop` turns a popped job back into a request
for `kakumei worker --horde`.
"""

from __future__ import annotations

import zlib
from typing import Any

from kakumei.prompt_schedule import has_schedule
from kakumei.schemas import MAX_BATCH_SIZE, SAMPLERS, GenerationRequest

# The Horde's sampler names -> AUTOMATIC1111's, which kakumei speaks.
SAMPLER_OF_HORDE: dict[str, str] = {
    "k_euler": "Euler",
    "k_euler_a": "Euler a",
    "k_heun": "Heun",
    "k_lms": "LMS",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_2s_a": "DPM++ 2S a",
    "DDIM": "DDIM",
    "lcm": "LCM",
}
HORDE_OF_SAMPLER: dict[str, str] = {a1111: horde for horde, a1111 in SAMPLER_OF_HORDE.items()}
# The Horde separates the negative prompt from the prompt with this.
NEGATIVE_SEPARATOR = "###"
SEED_MODULUS = 2**32


class HordeError(Exception):
    """A refusal in the Horde's shape: HTTP status, return code (`rc`) and a sentence."""

    def __init__(self, status: int, rc: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.rc = rc

    def body(self) -> dict[str, str]:
        return {"message": str(self), "rc": self.rc}


def bad(message: str, rc: str = "BadRequest") -> HordeError:
    return HordeError(400, rc, message)


# The rc the Horde answers with for each status kakumei's submit path refuses with.
RC_OF_STATUS = {
    400: "BadRequest", 401: "InvalidAPIKey", 403: "Forbidden", 404: "RequestNotFound", 409: "BadRequest",
    413: "BadRequest", 415: "BadRequest", 422: "BadRequest", 429: "TooManyPrompts",
}


def horde_seed(seed: Any) -> int:
    """The Horde's seed is text: a number is that number, other text a fixed hash of it, so
    that the same text gives the same image."""
    if seed is None or str(seed).strip() == "":
        return -1
    text = str(seed).strip()
    try:
        return int(text) % SEED_MODULUS
    except ValueError:
        return zlib.crc32(text.encode("utf-8")) % SEED_MODULUS


def split_prompt(prompt: str) -> tuple[str, str]:
    positive, _, negative = prompt.partition(NEGATIVE_SEPARATOR)
    return positive.strip(), negative.strip()


def _refuse_set(body: dict[str, Any], names: dict[str, str]) -> None:
    for name, what in names.items():
        value = body.get(name)
        if value not in (None, False, "", [], {}):
            raise bad(f"this server does not support {what} ({name})")


def to_generation_request(body: dict[str, Any], known_models: list[str]) -> GenerationRequest:
    """kakumei's request for a Horde `GenerationInputStable` body (already parsed JSON)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise HordeError(400, "MissingPrompt", "the request has no prompt")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise bad("params must be an object")
    _refuse_set(body, {
        "style": "styles", "workers": "choosing workers", "worker_blacklist": "choosing workers",
        "extra_source_images": "extra source images", "webhook": "webhooks", "proxied_account": "proxied accounts",
    })
    _refuse_set(params, {
        "post_processing": "post-processing", "loras": "Horde LoRAs", "tis": "Horde textual inversions",
        "tiling": "tiling", "control_type": "ControlNet", "image_is_control": "ControlNet",
        "return_control_map": "ControlNet", "workflow": "workflows", "transparent": "transparent images",
        "special": "special parameters",
    })
    if body.get("censor_nsfw"):
        raise bad("this server has no NSFW filter to censor images with; send censor_nsfw: false")
    if body.get("nsfw") is False:
        raise bad("this server cannot keep to safe-for-work workers; send nsfw: true")
    model = _model(body.get("models") or [], known_models)
    sampler = params.get("sampler_name", "k_euler_a")
    if sampler not in SAMPLER_OF_HORDE:
        raise HordeError(400, "UnsupportedSampler", f"sampler {sampler!r} is not supported here; known: {', '.join(SAMPLER_OF_HORDE)}")
    name = SAMPLER_OF_HORDE[sampler]
    karras = params.get("karras", True)
    n = int(params.get("n", params.get("n_iter", 1)) or 1)
    if n < 1 or n > 20:
        raise bad("n must be 1 to 20")
    seed_variation = params.get("seed_variation")
    if n > 1 and seed_variation not in (None, 1):
        raise bad("this server draws image i with seed + i; seed_variation must be 1")
    positive, negative = split_prompt(prompt)
    width, height = int(params.get("width", 512)), int(params.get("height", 512))
    fields: dict[str, Any] = {
        "prompt": positive,
        "negative_prompt": negative,
        "steps": int(params.get("steps", params.get("ddim_steps", 30))),
        "cfg_scale": float(params.get("cfg_scale", 7.5)),
        "seed": horde_seed(params.get("seed")),
        "sampler_name": name,
        "scheduler": "Karras" if karras and SAMPLERS[name] else "Automatic",
        "clip_skip": int(params.get("clip_skip", 1)),
        "width": width,
        "height": height,
        "model": model,
    }
    # n images: one batch up to what a batch holds, else batches of one (image i: seed + i).
    fields["batch_size"], fields["n_iter"] = (n, 1) if n <= MAX_BATCH_SIZE else (1, n)
    if params.get("hires_fix"):
        # The Horde's hires fix makes the asked size from a first pass at half of it.
        if width % 16 or height % 16:
            raise bad("hires_fix needs a width and height that are multiples of 16 here")
        fields.update(width=width // 2, height=height // 2, enable_hr=True, hr_scale=2.0,
                      denoising_strength=float(params.get("hires_fix_denoising_strength", 0.65)))
    _source(body, params, fields)
    return GenerationRequest.model_validate(fields)


def _model(models: Any, known: list[str]) -> str | None:
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise bad("models must be a list of model names")
    if not models:
        return None
    for name in models:
        if name in known:
            return name
    raise HordeError(400, "UnsupportedModel", f"none of the models {models[:5]} is served here; known: {', '.join(known)}")


def _source(body: dict[str, Any], params: dict[str, Any], fields: dict[str, Any]) -> None:
    source = body.get("source_image")
    processing = body.get("source_processing") or "img2img"
    if not source:
        if body.get("source_mask"):
            raise HordeError(400, "SourceMaskUnnecessary", "a source_mask needs a source_image")
        return
    if not isinstance(source, str) or source.startswith(("http://", "https://")):
        raise HordeError(400, "SourceImageUrlInvalid", "send source_image as base64; this server does not fetch URLs")
    if processing not in ("img2img", "inpainting"):
        raise bad(f"source_processing {processing!r} is not supported here; img2img and inpainting are")
    fields["init_images"] = [source]
    if fields.get("enable_hr"):
        raise bad("hires_fix works on text to image only here")
    fields["denoising_strength"] = float(params.get("denoising_strength", 0.75))
    if processing == "inpainting":
        mask = body.get("source_mask")
        if not mask:
            raise HordeError(400, "InpaintingMissingMask", "inpainting needs a source_mask (white is repainted)")
        fields["mask"] = mask


def horde_payload(request: GenerationRequest, seed: int) -> dict[str, Any]:
    """What a Horde worker pops for a kakumei request: the payload of `generate/pop`."""
    prompt = request.prompt + (f" {NEGATIVE_SEPARATOR} {request.negative_prompt}" if request.negative_prompt else "")
    payload: dict[str, Any] = {
        "prompt": prompt,
        "sampler_name": HORDE_OF_SAMPLER[request.sampler_name],
        "cfg_scale": request.cfg_scale,
        "seed": str(seed),
        "seed_variation": 1,
        "width": request.hr_size[0] if request.enable_hr else request.width,
        "height": request.hr_size[1] if request.enable_hr else request.height,
        "karras": request.scheduler == "Karras",
        "hires_fix": request.enable_hr,
        "clip_skip": request.clip_skip,
        "steps": request.steps,
        "n_iter": request.image_count,
        "tiling": False,
        "post_processing": [],
    }
    if request.init_images:
        payload["denoising_strength"] = request.denoising_strength
    if request.enable_hr:
        payload["hires_fix_denoising_strength"] = request.denoising_strength
    return payload


def horde_cannot_run(request: GenerationRequest) -> str | None:
    """Why a Horde worker could not reproduce this request (None: it can)."""
    if request.sampler_name not in HORDE_OF_SAMPLER:
        return f"the Horde has no sampler {request.sampler_name!r}"
    if request.scheduler not in ("Automatic", "Karras"):
        return f"the Horde has no schedule {request.scheduler!r}"
    if request.refiner_checkpoint:
        return "the Horde has no refiner"
    if request.enable_hr and (request.hr_scale != 2.0 or request.init_images):
        return "the Horde's hires fix doubles a text-to-image pass only"
    if any("<lora:" in text or has_schedule(text) for text in (request.prompt, request.negative_prompt)):
        return "the Horde takes no LoRA tags or prompt editing in the prompt"
    return None


def request_from_pop(pop: dict[str, Any]) -> GenerationRequest:
    """The request to run for a job popped from a horde (`GenerationPayloadStable`): the same
    reading as a client's request, so both directions agree. Source images must be base64
    here (a worker downloads URLs first)."""
    payload = dict(pop.get("payload") or {})
    params = {k: v for k, v in payload.items() if k not in ("prompt", "ddim_steps", "n_iter", "use_nsfw_censor")}
    params["steps"] = payload.get("ddim_steps", payload.get("steps", 30))
    params["n"] = payload.get("n_iter", 1)
    model = pop.get("model")
    body: dict[str, Any] = {
        "prompt": payload.get("prompt") or "",
        "params": params,
        "models": [model] if model else [],
        "source_image": pop.get("source_image"),
        "source_processing": pop.get("source_processing") if pop.get("source_processing") != "txt2img" else None,
        "source_mask": pop.get("source_mask"),
    }
    return to_generation_request(body, [model] if model else [])
