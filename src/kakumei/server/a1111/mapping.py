"""AUTOMATIC1111 API semantics on kakumei, as pure functions: an A1111 request (with the
caller's options) onto a GenerationRequest, which options kakumei can honour, and kakumei's
jobs back into A1111's answers. No HTTP here: routes.py calls these.

A field kakumei cannot honour is refused with a sentence (`Unsupported`, a 400) when ignoring
it would change the image; otherwise it is ignored, as A1111 ignores keys it does not know.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import kakumei
from kakumei.config import Settings
from kakumei.engine.metadata import parse_infotext
from kakumei.errors import KakumeiError
from kakumei.fairness.shares import Place
from kakumei.schemas import SCHEDULE_NAMES, GenerationRequest
from kakumei.server.a1111.models import Img2ImgRequest, ProgressResponse, ProgressState, SDModelItem, Txt2ImgRequest
from kakumei.server.model_hashes import ModelFile
from kakumei.store.activity import ActiveJob
from kakumei.store.images import StoredImage
from kakumei.store.jobs import Job


class Unsupported(KakumeiError):
    """An A1111 field or option whose effect on the image kakumei cannot reproduce."""


# A1111 sampler aliases (its `aliases` lists) -> sampler names.
SAMPLER_ALIASES: dict[str, list[str]] = {
    "Euler": ["k_euler"],
    "Euler a": ["k_euler_a", "k_euler_ancestral"],
    "Heun": ["k_heun"],
    "LMS": ["k_lms"],
    "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ 2M SDE": ["k_dpmpp_2m_sde"],
    "DPM++ 3M SDE": ["k_dpmpp_3m_sde"],
    "DPM++ SDE": ["k_dpmpp_sde"],
    "DPM++ 2S a": ["k_dpmpp_2s_a"],
    "DPM2": ["k_dpm_2"],
    "DPM2 a": ["k_dpm_2_a"],
    "DDIM": ["ddim"],
    "PLMS": ["plms"],
    "UniPC": ["unipc"],
    "LCM": ["k_lcm"],
}
_SAMPLER_BY_ALIAS = {alias: name for name, aliases in SAMPLER_ALIASES.items() for alias in aliases}

# A1111 schedule (name, label, aliases, default_rho, need_inner_model), for those kakumei has.
SCHEDULES: tuple[tuple[str, str, list[str] | None, float, bool], ...] = (
    ("automatic", "Automatic", None, -1.0, False),
    ("uniform", "Uniform", None, -1.0, True),
    ("karras", "Karras", None, 7.0, False),
    ("exponential", "Exponential", None, -1.0, False),
    ("sgm_uniform", "SGM Uniform", ["SGMUniform"], -1.0, True),
    ("beta", "Beta", None, -1.0, True),
)
assert {s[1] for s in SCHEDULES} == set(SCHEDULE_NAMES), "keep SCHEDULES in step with schemas.SCHEDULE_NAMES"
_SCHEDULE_BY_ANY = {
    key.lower(): label for name, label, aliases, _, _ in SCHEDULES for key in (name, label, *(aliases or []))
}

# Samplers whose noise A1111 scales by eta (default 1), and those that use s_churn.
_ETA_ONE_SAMPLERS = frozenset({"Euler a", "DPM++ 2S a", "DPM2 a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE"})
_CHURN_SAMPLERS = frozenset({"Euler", "Heun", "DPM2"})

# A1111 options that change images, at the value that matches what kakumei does. A request
# (override_settings) or POST /options may repeat these values; any other value is refused.
IMAGE_OPTIONS: dict[str, Any] = {
    "eta_noise_seed_delta": 0,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "s_churn": 0.0,
    "s_min_uncond": 0.0,
    "s_noise": 1.0,
    "randn_source": "CPU",
    "sd_vae": "Automatic",
    "sd_unet": "Automatic",
    "token_merging_ratio": 0.0,
    "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0,
    "img2img_color_correction": False,
    "initial_noise_multiplier": 1.0,
    "emphasis": "Original",
    "use_old_emphasis_implementation": False,
    "sgm_noise_multiplier": False,
    "always_discard_next_to_last_sigma": False,
    "tiling": False,
}
# Values A1111 treats as the same choice as the default.
_SAME_AS_DEFAULT = {"sd_vae": {"None", None}, "sd_unet": {"None", None}}

# Options kakumei reports so that clients find what they look for; they change nothing.
REPORTED_OPTIONS: dict[str, Any] = {
    "samples_format": "png",
    "return_grid": False,
    "enable_pnginfo": True,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 1,
    "sd_checkpoints_limit": 1,
    "sd_checkpoint_cache": 0,
}


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return value == default
    if isinstance(default, (int, float)) and isinstance(value, (int, float)):
        return float(value) == float(default)
    return value == default


def reported_options(own: Mapping[str, Any], default_model: str) -> dict[str, Any]:
    """GET /options: A1111's option names at the values kakumei generates with, the caller's
    own options over them."""
    return {
        **IMAGE_OPTIONS,
        **REPORTED_OPTIONS,
        "CLIP_stop_at_last_layers": 1,
        "sd_checkpoint_hash": "",
        **own,
        "sd_model_checkpoint": own.get("sd_model_checkpoint") or default_model,
    }


# The option names POST /options keeps: those GET /options reports, so a client may post back
# what it read. A1111 refuses names it does not know too, and a fixed set keeps what one
# caller can store small.
KEPT_OPTIONS: frozenset[str] = frozenset(
    {*IMAGE_OPTIONS, *REPORTED_OPTIONS, "sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_checkpoint_hash"}
)
# Longest text an option may hold (checkpoint titles are "name [hash]", well under this).
MAX_OPTION_TEXT = 200


def _shown(value: Any, most: int = 60) -> str:
    """`value` for a message, cut short: a refusal must not echo a huge value back."""
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def checked_options(values: Mapping[str, Any], known_models: list[str]) -> dict[str, Any]:
    """POST /options: the values to keep, or Unsupported for the first kakumei cannot honour
    (then nothing is kept): only KEPT_OPTIONS, each a JSON scalar of bounded size."""
    unknown = [key for key in values if key not in KEPT_OPTIONS]
    if unknown:
        names = ", ".join(_shown(key, 40) for key in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise Unsupported(f"unknown option {names}; kakumei keeps only: {', '.join(sorted(KEPT_OPTIONS))}")
    for key, value in values.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise Unsupported(f"option {key} must be text, a number or true/false, got {type(value).__name__}")
        if isinstance(value, str) and len(value) > MAX_OPTION_TEXT:
            raise Unsupported(f"option {key} is {len(value)} characters long; at most {MAX_OPTION_TEXT} are kept")
    return {key: check_option(key, value, known_models) for key, value in values.items()}


def check_option(key: str, value: Any, known_models: list[str]) -> Any:
    """The value to keep for option `key`, or Unsupported when kakumei cannot honour it."""
    if key == "sd_model_checkpoint":
        return resolve_checkpoint(str(value), known_models)
    if key == "CLIP_stop_at_last_layers":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= int(value) <= 12:
            raise Unsupported(f"CLIP_stop_at_last_layers must be a whole number from 1 to 12, got {_shown(value)}")
        return int(value)
    if key in IMAGE_OPTIONS:
        default = IMAGE_OPTIONS[key]
        if not _same(value, default) and value not in _SAME_AS_DEFAULT.get(key, ()):
            raise Unsupported(
                f"option {key}={_shown(value)} would change the image and kakumei cannot do it; "
                f"it stays {default!r} (leave it out)"
            )
    return value


def resolve_checkpoint(name: str, known_models: list[str]) -> str:
    """A model reference from what A1111 clients send: a title ("name [hash]"), a file name,
    or kakumei's own reference."""
    candidates = [name, name.rsplit(" [", 1)[0] if name.endswith("]") else name]
    for candidate in list(candidates):
        for suffix in (".safetensors", ".ckpt"):
            if candidate.endswith(suffix):
                candidates.append(candidate[: -len(suffix)])
    for candidate in candidates:
        if candidate in known_models:
            return candidate
    raise Unsupported(f"unknown checkpoint {_shown(name)}; known: {', '.join(known_models)}")


# -- request mapping ---------------------------------------------------------------------------


def _sampler(req: Txt2ImgRequest | Img2ImgRequest) -> str:
    name = req.sampler_name or req.sampler_index
    return _SAMPLER_BY_ALIAS.get(name, name)


def _schedule(name: str | None) -> str:
    if name is None:
        return "Automatic"
    return _SCHEDULE_BY_ANY.get(name.lower(), name)


def _refuse_unreproducible(req: Txt2ImgRequest | Img2ImgRequest, sampler: str) -> None:
    """Fields A1111 would act on and kakumei cannot: ignoring them would change the image."""
    if req.script_name:
        raise Unsupported(f"kakumei runs no scripts; script {req.script_name!r} is not available (leave out script_name)")
    active = sorted(name for name, conf in req.alwayson_scripts.items() if not isinstance(conf, dict) or conf.get("args"))
    if active:
        raise Unsupported(f"kakumei runs no scripts; alwayson_scripts {', '.join(active)} are not available")
    problems = []
    if req.subseed_strength:
        problems.append("variation seeds (subseed_strength)")
    if req.seed_resize_from_h > 0 or req.seed_resize_from_w > 0:
        problems.append("seed resize (seed_resize_from_h/w)")
    if req.restore_faces:
        problems.append("face restoration (restore_faces)")
    if req.tiling:
        problems.append("tiling")
    if req.firstpass_image:
        problems.append("firstpass_image")
    if req.infotext:
        problems.append("parameters from infotext (send the fields instead)")
    if req.disable_extra_networks and "<" in req.prompt:
        problems.append("disable_extra_networks with <lora:...> in the prompt")
    if req.s_min_uncond:
        problems.append("s_min_uncond")
    eta_default = 1.0 if sampler in _ETA_ONE_SAMPLERS else 0.0 if sampler == "DDIM" else None
    if req.eta is not None and eta_default is not None and float(req.eta) != eta_default:
        problems.append(f"eta={req.eta} for {sampler} (kakumei uses {eta_default})")
    if req.s_churn and sampler in _CHURN_SAMPLERS:
        problems.append(f"s_churn for {sampler}")
    if req.s_noise not in (None, 1, 1.0) and (sampler in _CHURN_SAMPLERS or sampler in _ETA_ONE_SAMPLERS):
        problems.append(f"s_noise for {sampler}")
    if problems:
        raise Unsupported("kakumei cannot do " + "; ".join(problems) + ". Leave these out or at their defaults.")


def _hires(req: Txt2ImgRequest, sampler: str, scheduler: str) -> dict[str, Any]:
    if not req.enable_hr:
        return {}
    problems = []
    if req.hr_checkpoint_name not in (None, "", "Use same checkpoint"):
        problems.append("another checkpoint for the hires pass (hr_checkpoint_name)")
    if req.hr_sampler_name not in (None, "", "Use same sampler", sampler):
        problems.append("another sampler for the hires pass (hr_sampler_name)")
    if req.hr_scheduler not in (None, "", "Use same scheduler") and _schedule(req.hr_scheduler) != scheduler:
        problems.append("another schedule for the hires pass (hr_scheduler)")
    if req.hr_prompt not in ("", req.prompt) or req.hr_negative_prompt not in ("", req.negative_prompt):
        problems.append("other prompts for the hires pass (hr_prompt, hr_negative_prompt)")
    scale = req.hr_scale
    if req.hr_resize_x or req.hr_resize_y:
        scales = {side / base for side, base in ((req.hr_resize_x, req.width), (req.hr_resize_y, req.height)) if side}
        if len(scales) > 1:
            problems.append("hr_resize_x/hr_resize_y with another aspect ratio than width/height (use hr_scale)")
        scale = scales.pop()
    if problems:
        raise Unsupported("kakumei cannot do " + "; ".join(problems) + ".")
    return {
        "enable_hr": True,
        "hr_scale": scale,
        "hr_upscaler": req.hr_upscaler or "Latent",
        "hr_second_pass_steps": req.hr_second_pass_steps,
    }


def _img2img(req: Img2ImgRequest) -> dict[str, Any]:
    if not req.init_images:
        raise Unsupported("img2img needs init_images: a list of base64 images")
    for image in [*req.init_images, req.mask or ""]:
        if image.startswith(("http://", "https://")):
            raise Unsupported("kakumei does not fetch images from URLs; send them as base64")
    if req.latent_mask:
        raise Unsupported("kakumei cannot do latent_mask")
    if req.initial_noise_multiplier not in (None, 1, 1.0):
        raise Unsupported("kakumei cannot do initial_noise_multiplier other than 1")
    blur = req.mask_blur
    if blur is None:
        if req.mask_blur_x != req.mask_blur_y:
            raise Unsupported("kakumei blurs masks evenly: give mask_blur_x equal to mask_blur_y (or mask_blur)")
        blur = req.mask_blur_x
    return {
        "init_images": req.init_images,
        "resize_mode": req.resize_mode,
        "mask": req.mask,
        "mask_blur": blur,
        "inpainting_fill": req.inpainting_fill,
        "inpaint_full_res": req.inpaint_full_res,
        "inpaint_full_res_padding": req.inpaint_full_res_padding,
        "inpainting_mask_invert": req.inpainting_mask_invert,
    }


def to_generation_request(
    req: Txt2ImgRequest | Img2ImgRequest, options: Mapping[str, Any], known_models: list[str]
) -> GenerationRequest:
    """The kakumei request for an A1111 one, with the caller's options and the request's
    override_settings applied. Raises Unsupported (400) or pydantic's ValidationError (422)."""
    effective = dict(options)
    for key, value in (req.override_settings or {}).items():
        effective[key] = check_option(key, value, known_models)
    sampler = _sampler(req)
    scheduler = _schedule(req.scheduler)
    _refuse_unreproducible(req, sampler)
    refiner = req.refiner_checkpoint
    values: dict[str, Any] = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "translate": req.translate,
        "steps": req.steps,
        "cfg_scale": req.cfg_scale,
        "width": req.width,
        "height": req.height,
        "seed": req.seed,
        "batch_size": req.batch_size,
        "n_iter": req.n_iter,
        "sampler_name": sampler,
        "scheduler": scheduler,
        "clip_skip": effective.get("CLIP_stop_at_last_layers", 1),
        "model": effective.get("sd_model_checkpoint") or None,
        "denoising_strength": 0.75 if req.denoising_strength is None else req.denoising_strength,
        "keep_interrupted": True,
    }
    if refiner not in (None, "", "None"):
        values["refiner_checkpoint"] = resolve_checkpoint(refiner, known_models)
        if req.refiner_switch_at is not None:
            values["refiner_switch_at"] = req.refiner_switch_at
    if isinstance(req, Txt2ImgRequest):
        values.update(_hires(req, sampler, scheduler))
    else:
        values.update(_img2img(req))
    return GenerationRequest(**values)


def echoed_parameters(req: Txt2ImgRequest | Img2ImgRequest) -> dict[str, Any]:
    """The request as A1111 echoes it in `parameters` (input images left out unless asked)."""
    params = req.model_dump()
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        params["init_images"] = None
        params["mask"] = None
    return params


def job_info(job: Job, request: GenerationRequest, images: list[StoredImage]) -> str:
    """A1111's `info`: a JSON string describing what was generated."""
    infotexts = [image.infotext for image in images]
    seeds = [image.seed for image in images]
    fields = parse_infotext(infotexts[0]) if infotexts else {}
    seed = seeds[0] if seeds else (job.seed if job.seed is not None else request.seed)
    count = len(images)
    info = {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * count,
        "seed": seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * count,
        "subseed_strength": 0,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler_name,
        "scheduler": request.scheduler,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": fields.get("Model", job.model),
        "sd_model_hash": fields.get("Model hash"),
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength if request.mode != "txt2img" or request.enable_hr else None,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(job.created_at)),
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": f"kakumei {kakumei.__version__}",
        "job_id": job.id,
        "state": job.state.value,
        "error": job.error,
    }
    # What was written, where kakumei translated a Japanese prompt ("prompt" is the English
    # that was encoded, as the infotexts say).
    if request.prompt_original is not None:
        info["prompt_original"] = request.prompt_original
    if request.negative_prompt_original is not None:
        info["negative_prompt_original"] = request.negative_prompt_original
    if request.untranslated:
        info["untranslated"] = list(request.untranslated)
    return json.dumps(info)


def png_info_parameters(infotext: str) -> dict[str, Any]:
    """A1111's `parameters` for png-info: Prompt, Negative prompt, each field, Size-1/Size-2."""
    if not infotext:
        return {}
    fields = parse_infotext(infotext)
    params: dict[str, Any] = {"Prompt": fields.pop("prompt", ""), "Negative prompt": fields.pop("negative_prompt", "")}
    for key, value in fields.items():
        if key in ("Size", "Hires resize") and isinstance(value, str) and "x" in value:
            first, _, second = value.partition("x")
            params[f"{key}-1"], params[f"{key}-2"] = first.strip(), second.strip()
        else:
            params[key] = value
    return params


def progress_response(
    job: ActiveJob, count: int, placed: tuple[Place, float] | None, preview: str | None
) -> ProgressResponse:
    """A1111's progress of the caller's current job: the fraction of steps done while it runs,
    its place while it waits. `preview` is the newest preview as a data URL, if any."""
    running = job.state != "queued"
    fraction = (job.step or 0) / job.total if running and job.total else 0.0
    textinfo = None
    if not running and placed is not None:
        textinfo = f"In queue: {placed[0].jobs_ahead} job(s) before yours"
    state = ProgressState(
        interrupted=job.cancel_requested,
        job=job.id,
        job_count=count,
        job_timestamp=time.strftime("%Y%m%d%H%M%S", time.gmtime(job.created_at)),
        sampling_step=job.step or 0,
        sampling_steps=job.total or 0,
    )
    return ProgressResponse(
        progress=fraction,
        eta_relative=placed[1] if placed is not None else 0.0,
        state=state,
        current_image=preview.split(",", 1)[1] if preview else None,
        textinfo=textinfo,
    )


def sd_model_item(name: str, file: ModelFile | None) -> SDModelItem:
    """A1111's checkpoint entry for a model kakumei knows by `name` (also its title, which
    is what sd_model_checkpoint takes and GET /options reports)."""
    if file is None:
        return SDModelItem(title=name, model_name=name, hash=None, sha256=None, filename=name, config=None)
    return SDModelItem(
        title=name, model_name=name, hash=file.short_hash, sha256=file.sha256, filename=file.filename, config=None
    )


def command_line_flags(settings: Settings) -> dict[str, Any]:
    """GET /cmd-flags: the A1111 command-line flags that describe how this server runs."""
    return {
        "api": True,
        "nowebui": False,
        "listen": settings.host not in ("127.0.0.1", "localhost", "::1"),
        "port": settings.port,
        "api_auth": None,
        "api_server_stop": False,
        "ckpt_dir": None,
        "lora_dir": None,
        "embeddings_dir": None,
        "lowvram": settings.low_memory,
        "medvram": False,
        "no_half": settings.dtype == "float32",
    }
