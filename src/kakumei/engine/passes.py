"""The denoising passes of one batch: text-to-image, img2img, inpainting, hires fix and the
SDXL refiner, each a call into a diffusers pipeline with kakumei's own prompt encodings,
CPU noise and step callbacks."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from kakumei.engine.imageops import fill_masked, paste_over, prepare_mask, resize_image
from kakumei.engine.lora import LoraFile
from kakumei.engine.models import LoadedModel
from kakumei.engine.prompts import EncodedPrompt
from kakumei.engine.samplers import make_scheduler
from kakumei.engine.seeds import cpu_generators, cpu_noise
from kakumei.errors import GenerationCancelled, InvalidRequest
from kakumei.images import decode_image_b64
from kakumei.schemas import INPAINTING_FILLS, MAX_INPUT_BYTES, MAX_INPUT_PIXELS, MAX_STEPS, GenerationRequest

# hr_upscaler name -> torch interpolate arguments (A1111's latent upscale modes)
_LATENT_MODES: dict[str, dict[str, Any]] = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (bicubic antialiased)": {"mode": "bicubic", "antialias": True},
    "Latent (nearest)": {"mode": "nearest"},
    "Latent (nearest-exact)": {"mode": "nearest-exact"},
}
_PIXEL_MODES = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST, "None": Image.Resampling.LANCZOS}


@dataclass
class Inputs:
    """The request's input images, decoded, resized to the output size, with their hashes."""

    images: list[Image.Image] = field(default_factory=list)
    mask: Image.Image | None = None
    image_hashes: list[str] = field(default_factory=list)
    mask_hash: str | None = None


def prepare_inputs(request: GenerationRequest) -> Inputs:
    out = Inputs()
    size = (request.width, request.height)
    for i, data in enumerate(request.init_images):
        img = decode_image_b64(data, f"init_images[{i}]", MAX_INPUT_PIXELS, MAX_INPUT_BYTES)
        out.images.append(resize_image(request.resize_mode, img.convert("RGB"), *size))
        out.image_hashes.append(hashlib.sha256(data.encode()).hexdigest())
    if request.mask is not None:
        mask = decode_image_b64(request.mask, "mask", MAX_INPUT_PIXELS, MAX_INPUT_BYTES)
        mask = resize_image(request.resize_mode, mask.convert("L"), *size)
        out.mask = prepare_mask(mask, request.mask_blur, bool(request.inpainting_mask_invert))
        out.mask_hash = hashlib.sha256(request.mask.encode()).hexdigest()
    return out


def check_request_fits(request: GenerationRequest, model: LoadedModel, refiner: LoadedModel | None) -> None:
    """Refuse combinations a model cannot do, with what would work instead."""
    arch = model.architecture
    if arch.endswith("-refiner"):
        raise InvalidRequest(
            f"{model.source.name} is an SDXL refiner; use it as refiner_checkpoint with an SDXL base model"
        )
    if arch.endswith("-inpaint") and request.mode != "inpaint":
        raise InvalidRequest(f"{model.source.name} is an inpainting model; give init_images and a mask")
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
    if refiner is not None:
        if model.family != "sdxl":
            raise InvalidRequest(f"a refiner needs an SDXL base model; {model.source.name} is {arch}")
        if refiner.family != "sdxl":
            raise InvalidRequest(f"refiner_checkpoint {refiner.source.name} is {refiner.architecture}, not an SDXL model")
        if request.mode != "txt2img" or request.enable_hr:
            raise InvalidRequest("the refiner applies to text-to-image without hires fix in this version of kakumei")


@dataclass
class GenerationExtras:
    """What, besides the request and the model, went into the images (for the metadata)."""

    loras: list[LoraFile]
    embeddings: list[dict[str, str]]
    refiner: LoadedModel | None
    inputs: Inputs

    def infotext_fields(self, request: GenerationRequest) -> dict[str, str]:
        fields: dict[str, str] = {}
        if request.mode != "txt2img" or request.enable_hr:
            fields["Denoising strength"] = f"{request.denoising_strength:g}"
        if request.mode == "inpaint":
            fields["Mask blur"] = str(request.mask_blur)
            fields["Masked content"] = INPAINTING_FILLS[request.inpainting_fill]
            if request.inpaint_full_res:
                fields["Inpaint area"] = "Only masked"
                fields["Masked area padding"] = str(request.inpaint_full_res_padding)
            if request.inpainting_mask_invert:
                fields["Mask mode"] = "Inpaint not masked"
        if request.enable_hr:
            fields["Hires upscale"] = f"{request.hr_scale:g}"
            if request.hr_second_pass_steps:
                fields["Hires steps"] = str(request.hr_second_pass_steps)
            fields["Hires upscaler"] = request.hr_upscaler
        if self.refiner is not None:
            fields["Refiner"] = f"{self.refiner.source.name} [{self.refiner.short_hash}]"
            fields["Refiner switch at"] = f"{request.refiner_switch_at:g}"
        if self.loras:
            fields["Lora hashes"] = ", ".join(f"{lo.name}: {lo.short_hash}" for lo in self.loras)
        if self.embeddings:
            fields["TI hashes"] = ", ".join(f"{e['name']}: {e['sha256'][:12]}" for e in self.embeddings)
        return fields

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.inputs.image_hashes:
            meta["inputs"] = {"init_images_sha256": self.inputs.image_hashes, "mask_sha256": self.inputs.mask_hash}
        if self.loras:
            meta["loras"] = [lo.metadata() for lo in self.loras]
        if self.embeddings:
            meta["embeddings"] = self.embeddings
        if self.refiner is not None:
            meta["refiner"] = {"ref": self.refiner.source.ref, "name": self.refiner.source.name, "sha256": self.refiner.sha256}
        return meta


class _BatchRun:
    """One batch of a request through its passes."""

    def __init__(
        self,
        request: GenerationRequest,
        model: LoadedModel,
        refiner: LoadedModel | None,
        cond: EncodedPrompt,
        uncond: EncodedPrompt,
        refiner_conds: list[EncodedPrompt] | None,
        inputs: Inputs,
        seeds: list[int],
        offset: int,
        on_step: Callable[[Any], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> None:
        self.request, self.model, self.refiner = request, model, refiner
        self.cond, self.uncond, self.refiner_conds = cond, uncond, refiner_conds
        self.inputs, self.seeds, self.offset = inputs, seeds, offset
        self.on_step, self.cancelled = on_step, cancelled
        self.steps_done = 0  # steps of earlier passes, so progress counts on across passes
        self.stopped = False
        # A float, or per-image scales when jobs of several users share the batch.
        self.guidance: Any = request.cfg_scale

    # -- pieces shared by every pass --

    def _conditioning(self, pipe: Any, cond: EncodedPrompt, uncond: EncodedPrompt) -> dict[str, Any]:
        bs = len(self.seeds)
        dev, dt = self.model.device, self.model.dtype
        # One encoding repeats over the batch; a cross-user batch brings one row per image.
        reps = bs if cond.embeds.shape[0] == 1 else 1
        kw: dict[str, Any] = {
            "prompt_embeds": cond.embeds.to(dev, dt).repeat(reps, 1, 1),
            "negative_prompt_embeds": uncond.embeds.to(dev, dt).repeat(reps, 1, 1),
        }
        if hasattr(pipe, "text_encoder_2"):
            kw["pooled_prompt_embeds"] = cond.pooled.to(dev, dt).repeat(reps, 1)
            kw["negative_pooled_prompt_embeds"] = uncond.pooled.to(dev, dt).repeat(reps, 1)
        return kw

    def _call(self, pipe: Any, model: LoadedModel, planned_after: int, **kwargs: Any) -> Any:
        from kakumei.engine.pipeline import StepProgress

        req = self.request
        pipe.scheduler = make_scheduler(req.sampler_name, req.scheduler, model.base_scheduler_config)
        if hasattr(pipe.scheduler, "noise_sampler_seed"):
            # DPM++ SDE draws its noise from a Brownian tree that is seeded on its own
            # (from the global RNG when unseeded): give it each image's seed.
            pipe.scheduler.noise_sampler_seed = list(self.seeds)
        before = self.steps_done

        def step_end(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            if self.on_step is not None:
                total = before + p.num_timesteps + planned_after
                self.on_step(StepProgress(before + i + 1, total, self.offset, req.image_count, kw.get("latents")))
            if self.cancelled is not None and self.cancelled():
                self.stopped = True
                p._interrupt = True  # diffusers' own way to leave the denoising loop
            return kw

        with torch.inference_mode():
            out = pipe(
                guidance_scale=self.guidance,
                # CPU generators: img2img noise and ancestral/SDE noise are device-independent too
                generator=cpu_generators(self.seeds),
                callback_on_step_end=step_end,
                **kwargs,
            )
        if self.stopped:
            raise GenerationCancelled()
        self.steps_done = before + getattr(pipe, "num_timesteps", 0)
        return out.images

    def _noise(self, pipe: Any, width: int, height: int) -> torch.Tensor:
        scale = getattr(pipe, "vae_scale_factor", 8)
        shape = (pipe.unet.config.in_channels, height // scale, width // scale)
        return cpu_noise(cpu_generators(self.seeds), shape).to(self.model.device, self.model.dtype)

    def _batch_inputs(self) -> list[Image.Image]:
        imgs = self.inputs.images
        return [imgs[(self.offset + i) % len(imgs)] for i in range(len(self.seeds))]

    # -- the passes --

    def images(self) -> list[Image.Image]:
        req = self.request
        if req.mode == "img2img":
            return self._img2img()
        if req.mode == "inpaint":
            return self._inpaint()
        if req.enable_hr:
            return self._hires()
        if self.refiner is not None:
            return self._refined()
        return self._txt2img("pil", 0)

    def _txt2img(self, output_type: str, planned_after: int, **extra: Any) -> Any:
        req, pipe = self.request, self.model.variant("txt2img")
        return self._call(
            pipe,
            self.model,
            planned_after,
            num_inference_steps=req.steps,
            width=req.width,
            height=req.height,
            latents=self._noise(pipe, req.width, req.height),
            output_type=output_type,
            **self._conditioning(pipe, self.cond, self.uncond),
            **extra,
        )

    def _img2img(self) -> list[Image.Image]:
        req, pipe = self.request, self.model.variant("img2img")
        return self._call(
            pipe,
            self.model,
            0,
            image=self._batch_inputs(),
            strength=req.denoising_strength,
            num_inference_steps=req.steps,
            output_type="pil",
            **self._conditioning(pipe, self.cond, self.uncond),
        )

    def _inpaint(self) -> list[Image.Image]:
        req, pipe = self.request, self.model.variant("inpaint")
        assert self.inputs.mask is not None
        mask = self.inputs.mask
        originals = self._batch_inputs()
        # Noise fill is seeded per batch, so that one image can stand for the batch below.
        filled = [fill_masked(img, mask, req.inpainting_fill, self.seeds[0]) for img in originals]
        if len(set(map(id, originals))) == 1:
            filled = [filled[0]] * len(filled)
        single = all(img is filled[0] for img in filled) and req.inpaint_full_res
        out = self._call(
            pipe,
            self.model,
            0,
            # diffusers' mask crop takes one PIL image, which it repeats over the batch
            image=filled[0] if single else filled,
            mask_image=mask if single else [mask] * len(filled),
            strength=req.denoising_strength,
            num_inference_steps=req.steps,
            width=req.width,
            height=req.height,
            # "only masked": diffusers crops around the mask, repaints at full size, pastes back
            padding_mask_crop=req.inpaint_full_res_padding if req.inpaint_full_res else None,
            output_type="pil",
            **self._conditioning(pipe, self.cond, self.uncond),
        )
        return [paste_over(orig, gen, mask) for orig, gen in zip(originals, out)]

    def _hires(self) -> list[Image.Image]:
        req = self.request
        hr_w, hr_h = req.hr_size
        hr_steps = req.hr_second_pass_steps or req.steps
        planned = int(hr_steps * req.denoising_strength)
        latent = req.hr_upscaler in _LATENT_MODES
        first = self._txt2img("latent" if latent else "pil", planned)
        if latent:
            scale = getattr(self.model.pipe, "vae_scale_factor", 8)
            upscaled: Any = torch.nn.functional.interpolate(
                first.float(), size=(hr_h // scale, hr_w // scale), **_LATENT_MODES[req.hr_upscaler]
            ).to(first.dtype)
        else:
            upscaled = [im.resize((hr_w, hr_h), resample=_PIXEL_MODES[req.hr_upscaler]) for im in first]
        pipe = self.model.variant("img2img")
        return self._call(
            pipe,
            self.model,
            0,
            image=upscaled,
            strength=req.denoising_strength,
            num_inference_steps=hr_steps,
            output_type="pil",
            **self._conditioning(pipe, self.cond, self.uncond),
        )

    def _refined(self) -> list[Image.Image]:
        req = self.request
        assert self.refiner is not None and self.refiner_conds is not None
        planned = req.steps - int(req.steps * req.refiner_switch_at)
        latents = self._txt2img("latent", planned, denoising_end=req.refiner_switch_at)
        pipe = self.refiner.variant("img2img")
        cond, uncond = self.refiner_conds
        return self._call(
            pipe,
            self.refiner,
            0,
            image=latents,
            num_inference_steps=req.steps,
            denoising_start=req.refiner_switch_at,
            output_type="pil",
            **self._conditioning(pipe, cond, uncond),
        )
