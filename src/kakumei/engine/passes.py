"""The runner of a batch plan: its passes (text-to-image, img2img, inpainting, hires fix and
the SDXL refiner), each a call into a diffusers pipeline with the plan's prompt encodings,
CPU noise per image seed and step callbacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

from kakumei.engine.deepcache import deep_cache
from kakumei.engine.imageops import fill_masked, paste_over
from kakumei.engine.models import LoadedModel
from kakumei.engine.plan import BatchPlan, PromptTimeline
from kakumei.engine.prompts import EncodedPrompt
from kakumei.engine.results import StepProgress
from kakumei.engine.samplers import make_scheduler
from kakumei.engine.seeds import cpu_generators, cpu_noise
from kakumei.errors import GenerationCancelled, NonFiniteImage

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


def run_plan(
    plan: BatchPlan,
    on_step: Callable[[StepProgress], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    deepcache_interval: int = 0,
) -> list[Image.Image]:
    """Denoise and decode the plan's images (one pass, or base + hires / refiner pass), in
    the plan's image order. Raises GenerationCancelled at the next step once `cancelled()`.
    `deepcache_interval` N >= 2 reuses the UNet's deep features for N-1 of every N UNet
    calls of each pass (deepcache.py); 0 runs the exact UNet."""
    return _PlanRun(plan, on_step, cancelled, deepcache_interval).images()


NAN_IMAGE = (
    "the model decoded NaN pixels instead of an image, so it was not saved "
    "(with float16, --dtype float32 or KAKUMEI_DTYPE=float32 usually avoids this)"
)


@contextmanager
def _refusing_nan_decodes(pipe: Any) -> Iterator[None]:
    """Raise NonFiniteImage as soon as the pass's VAE decodes NaN or infinite pixels.

    diffusers would cast them to black pixels with a bare numpy warning. The check hooks the
    decoder module, so it sees every decode (tiled ones too) without changing the output.
    """
    decoder = getattr(getattr(pipe, "vae", None), "decoder", None)
    if decoder is None:
        yield
        return

    def check(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        if not bool(torch.isfinite(output).all()):
            raise NonFiniteImage(NAN_IMAGE)

    handle = decoder.register_forward_hook(check)
    try:
        yield
    finally:
        handle.remove()


def _next_conditioning(
    pipe: Any,
    kw: dict[str, Any],
    timeline: PromptTimeline,
    step: int,
    current: list[tuple[EncodedPrompt, EncodedPrompt]],
) -> None:
    """Put the encodings of loop step `step` into the callback's tensors where they change.

    diffusers' SD and SDXL pipelines concatenate [negative, positive] along the batch once
    before their loop when CFG is on (`prompt_embeds`, and SDXL's pooled `add_text_embeds`),
    and read back whatever the step callback returns for the next step.
    """
    cond, uncond = timeline.at(step)
    if cond is current[0][0] and uncond is current[0][1]:
        return
    current[0] = (cond, uncond)
    guided = bool(pipe.do_classifier_free_guidance)
    for name, pick in (("prompt_embeds", lambda e: e.embeds), ("add_text_embeds", lambda e: e.pooled)):
        if name not in kw:
            continue
        ref = kw[name]
        tensor = pick(cond).to(ref.device, ref.dtype)
        kw[name] = torch.cat([pick(uncond).to(ref.device, ref.dtype), tensor]) if guided else tensor


class _PlanRun:
    """One plan through its passes; counts steps across passes for the progress."""

    def __init__(
        self,
        plan: BatchPlan,
        on_step: Callable[[StepProgress], None] | None,
        cancelled: Callable[[], bool] | None,
        deepcache_interval: int = 0,
    ) -> None:
        self.deepcache_interval = deepcache_interval
        self.plan, self.request, self.model, self.refiner = plan, plan.request, plan.model, plan.refiner
        self.seeds, self.offset = plan.seeds, plan.offset
        self.on_step, self.cancelled = on_step, cancelled
        self.steps_done = 0  # steps of earlier passes, so progress counts on across passes
        self.stopped = False

    # -- pieces shared by every pass --

    def _conditioning(self, pipe: Any, cond: EncodedPrompt, uncond: EncodedPrompt) -> dict[str, Any]:
        # The plan's encodings have one row per image already.
        dev, dt = self.model.device, self.model.dtype
        kw: dict[str, Any] = {
            "prompt_embeds": cond.embeds.to(dev, dt),
            "negative_prompt_embeds": uncond.embeds.to(dev, dt),
        }
        if hasattr(pipe, "text_encoder_2"):
            assert cond.pooled is not None and uncond.pooled is not None
            kw["pooled_prompt_embeds"] = cond.pooled.to(dev, dt)
            kw["negative_pooled_prompt_embeds"] = uncond.pooled.to(dev, dt)
        return kw

    def _call(
        self,
        pipe: Any,
        model: LoadedModel,
        planned_after: int,
        timeline: PromptTimeline | None = None,
        first_step: int = 0,
        **kwargs: Any,
    ) -> Any:
        """One pipeline call. With a `timeline`, the step callback swaps the prompt
        encodings for the next step where the schedule changes; `first_step` is the
        timeline's step at this call's first step (the refiner goes on from the base pass)."""
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
            if timeline is not None:
                _next_conditioning(p, kw, timeline, first_step + i + 1, current)
            return kw

        extra: dict[str, Any] = {}
        current: list[tuple[EncodedPrompt, EncodedPrompt]] = []
        if timeline is not None:
            current.append(timeline.at(first_step))
            # diffusers hands these to the callback and takes back what it returns
            extra["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"] + (
                ["add_text_embeds"] if hasattr(pipe, "text_encoder_2") else []
            )
        with torch.inference_mode(), _refusing_nan_decodes(pipe), deep_cache(getattr(pipe, "unet", None), self.deepcache_interval):
            out = pipe(
                guidance_scale=self.plan.guidance,
                # CPU generators: img2img noise and ancestral/SDE noise are device-independent too
                generator=cpu_generators(self.seeds),
                callback_on_step_end=step_end,
                **extra,
                **kwargs,
            )
        if self.stopped:
            # diffusers decodes the latents it has when interrupted: hand them on, so that a
            # request that keeps interrupted images (A1111's interrupt) gets them at no cost.
            # A pass that hands latents to the next one has no pictures to give.
            partial = [i for i in getattr(out, "images", []) if isinstance(i, Image.Image)]
            raise GenerationCancelled(partial=partial)
        self.steps_done = before + getattr(pipe, "num_timesteps", 0)
        return out.images

    def _noise(self, pipe: Any, width: int, height: int) -> torch.Tensor:
        scale = getattr(pipe, "vae_scale_factor", 8)
        shape = (pipe.unet.config.in_channels, height // scale, width // scale)
        return cpu_noise(cpu_generators(self.seeds), shape).to(self.model.device, self.model.dtype)

    def _batch_inputs(self) -> list[Image.Image]:
        imgs = self.plan.inputs.images
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
            self.plan.timelines.get("base"),
            num_inference_steps=req.steps,
            width=req.width,
            height=req.height,
            latents=self._noise(pipe, req.width, req.height),
            output_type=output_type,
            **self._conditioning(pipe, self.plan.cond, self.plan.uncond),
            **extra,
        )

    def _img2img(self) -> list[Image.Image]:
        req, pipe = self.request, self.model.variant("img2img")
        return self._call(
            pipe,
            self.model,
            0,
            self.plan.timelines.get("base"),
            image=self._batch_inputs(),
            strength=req.denoising_strength,
            num_inference_steps=req.steps,
            output_type="pil",
            **self._conditioning(pipe, self.plan.cond, self.plan.uncond),
        )

    def _inpaint(self) -> list[Image.Image]:
        req, pipe = self.request, self.model.variant("inpaint")
        assert self.plan.inputs.mask is not None
        mask = self.plan.inputs.mask
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
            self.plan.timelines.get("base"),
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
            **self._conditioning(pipe, self.plan.cond, self.plan.uncond),
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
        # The second pass has a schedule of its own (prompt_schedule's hires_steps).
        timeline = self.plan.timelines.get("hires")
        cond, uncond = timeline.at(0) if timeline is not None else (self.plan.cond, self.plan.uncond)
        return self._call(
            pipe,
            self.model,
            0,
            timeline,
            image=upscaled,
            strength=req.denoising_strength,
            num_inference_steps=hr_steps,
            output_type="pil",
            **self._conditioning(pipe, cond, uncond),
        )

    def _refined(self) -> list[Image.Image]:
        req = self.request
        assert self.refiner is not None and self.plan.refiner_conds is not None
        planned = req.steps - int(req.steps * req.refiner_switch_at)
        latents = self._txt2img("latent", planned, denoising_end=req.refiner_switch_at)
        base_steps = self.steps_done  # the refiner goes on with the schedule from here
        pipe = self.refiner.variant("img2img")
        timeline = self.plan.timelines.get("refiner")
        cond, uncond = timeline.at(base_steps) if timeline is not None else self.plan.refiner_conds
        return self._call(
            pipe,
            self.refiner,
            0,
            timeline,
            base_steps,
            image=latents,
            num_inference_steps=req.steps,
            denoising_start=req.refiner_switch_at,
            output_type="pil",
            **self._conditioning(pipe, cond, uncond),
        )
