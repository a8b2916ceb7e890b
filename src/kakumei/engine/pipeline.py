"""Engine.generate(request, on_step, cancelled) -> images with their metadata.

The one place generation happens: the CLI, the Python API, and every worker call it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

import kakumei
from kakumei.config import Settings
from kakumei.engine import metadata as md
from kakumei.engine.devices import dtype_name, pick_device, pick_dtype
from kakumei.engine.models import HashCache, LoadedModel, ModelCache, ModelSource, load_model, resolve_model
from kakumei.engine.preview import latents_to_preview
from kakumei.engine.samplers import make_scheduler
from kakumei.engine.seeds import cpu_generators, cpu_noise, image_seeds, resolve_seed
from kakumei.errors import GenerationCancelled, InvalidRequest
from kakumei.schemas import GenerationRequest

log = logging.getLogger(__name__)


@dataclass
class StepProgress:
    """One denoising step of one batch, passed to `on_step`."""

    step: int  # 1-based, within the current batch
    total: int  # steps in the current batch (some samplers take two model calls a step)
    image_offset: int  # index of the batch's first image within the request
    images_total: int
    _latents: torch.Tensor | None = field(default=None, repr=False)

    def preview(self) -> Image.Image | None:
        """A small, cheap RGB approximation of the batch's first image (no VAE decode)."""
        return None if self._latents is None else latents_to_preview(self._latents[0])


@dataclass
class GeneratedImage:
    image: Image.Image
    png: bytes
    seed: int
    index: int  # position within the request: batch * batch_size + position in batch
    infotext: str
    metadata: dict[str, Any]


@dataclass
class GenerationResult:
    request: GenerationRequest  # with the resolved seed and model
    seed: int
    images: list[GeneratedImage]


def encode_text(pipe: Any, prompts: list[str], clip_skip: int) -> torch.Tensor:
    """CLIP embeddings with A1111's clip skip (1 = last layer).

    Done here rather than by diffusers' `clip_skip`, which reaches into a text-encoder layout
    (`text_model.final_layer_norm`) that transformers 5 no longer has.
    """
    encoder = pipe.text_encoder
    tokens = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(encoder.device)
    out = encoder(tokens, output_hidden_states=clip_skip > 1)
    if clip_skip == 1:
        return out[0]
    final_norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
    return final_norm(out.hidden_states[-clip_skip])


def library_versions() -> dict[str, str]:
    versions = {"kakumei": kakumei.__version__}
    for dist in ("torch", "diffusers", "transformers"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


class Engine:
    """Loads models on first use (LRU cache) and generates images.

    Not thread-safe for concurrent `generate` calls on one engine: a worker runs one job at a
    time, which is also what a single GPU does best.
    """

    def __init__(self, settings: Settings, cache_size: int = 1) -> None:
        self.settings = settings
        self._device = pick_device(settings.device)
        self._dtype = pick_dtype(self._device, settings.dtype)
        self._cache = ModelCache(cache_size)
        self._hashes = HashCache(settings.home / "cache" / "hashes.json")

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def resolve_model_name(self, ref: str | None) -> ModelSource:
        """Check a model reference without loading it (raises ModelNotFound)."""
        return resolve_model(ref or self.settings.model, self.settings.models_dir)

    def model_names(self) -> list[str]:
        names = [self.settings.model] + [m.source.ref for m in self._cache.loaded()]
        return list(dict.fromkeys(names))

    def load(self, ref: str | None = None) -> LoadedModel:
        source = self.resolve_model_name(ref)
        key = (source.location, str(self._device), dtype_name(self._dtype))
        return self._cache.get(
            key,
            lambda: load_model(
                source,
                self.settings.models_dir,
                self._hashes,
                self._device,
                self._dtype,
                offline=self.settings.hf_offline,
                low_memory=self.settings.low_memory,
            ),
        )

    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[StepProgress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        on_image: Callable[[GeneratedImage], None] | None = None,
        user: str | None = None,
        only_batch: int | None = None,
    ) -> GenerationResult:
        """Generate every image of `request`.

        `on_image` is called as each image is finished (the CLI saves it at once).
        If `cancelled()` turns true, generation stops at the next step and
        GenerationCancelled carries the images finished so far.
        `only_batch` runs just that batch of the request (used to regenerate one image
        exactly: the request, and so the metadata, stay those of the original).
        """
        if only_batch is not None and not 0 <= only_batch < request.n_iter:
            raise InvalidRequest(f"only_batch must be between 0 and {request.n_iter - 1}, got {only_batch}")
        seed = resolve_seed(request.seed)
        resolved = request.model_copy(update={"seed": seed, "model": request.model or self.settings.model})
        images: list[GeneratedImage] = []
        try:
            for image in self._iter_images(resolved, on_step, cancelled, user, only_batch):
                images.append(image)
                if on_image is not None:
                    on_image(image)
        except GenerationCancelled as exc:
            exc.images = images
            raise
        return GenerationResult(request=resolved, seed=seed, images=images)

    def _iter_images(
        self,
        request: GenerationRequest,
        on_step: Callable[[StepProgress], None] | None,
        cancelled: Callable[[], bool] | None,
        user: str | None,
        only_batch: int | None,
    ) -> Iterator[GeneratedImage]:
        # 1. load the model and build the scheduler the request names
        model = self.load(request.model)
        pipe = model.pipe
        pipe.scheduler = make_scheduler(request.sampler_name, request.scheduler, model.base_scheduler_config)
        vae_scale = getattr(pipe, "vae_scale_factor", 8)
        latent_shape = (pipe.unet.config.in_channels, request.height // vae_scale, request.width // vae_scale)
        versions = library_versions()
        bs = request.batch_size

        batches = range(request.n_iter) if only_batch is None else [only_batch]
        for batch in batches:
            offset = batch * bs
            # 2. initial noise on the CPU from each image's own seed
            seeds = image_seeds(request.seed, bs, offset)
            generators = cpu_generators(seeds)
            latents = cpu_noise(generators, latent_shape).to(model.device, model.dtype)
            if hasattr(pipe.scheduler, "noise_sampler_seed"):
                # DPM++ SDE draws from a Brownian tree seeded from the global RNG unless told
                # otherwise; one tree per image seed keeps it reproducible and batch-independent.
                pipe.scheduler.noise_sampler_seed = seeds
            stopped = False

            def step_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                nonlocal stopped
                if on_step is not None:
                    on_step(StepProgress(i + 1, p.num_timesteps, offset, request.image_count, kwargs.get("latents")))
                if cancelled is not None and cancelled():
                    stopped = True
                    p._interrupt = True  # diffusers' own way to leave the denoising loop
                return kwargs

            if cancelled is not None and cancelled():
                raise GenerationCancelled()
            # 3. denoise and decode
            with torch.inference_mode():
                output = pipe(
                    prompt_embeds=encode_text(pipe, [request.prompt] * bs, request.clip_skip),
                    negative_prompt_embeds=encode_text(pipe, [request.negative_prompt] * bs, request.clip_skip),
                    num_inference_steps=request.steps,
                    guidance_scale=request.cfg_scale,
                    width=request.width,
                    height=request.height,
                    latents=latents,
                    # CPU generators: ancestral/SDE noise is device-independent too
                    generator=generators,
                    callback_on_step_end=step_end,
                    output_type="pil",
                )
            if stopped:
                raise GenerationCancelled()
            # 4. metadata and PNG bytes
            for position, (image, image_seed) in enumerate(zip(output.images, seeds)):
                yield self._finish(image, request, model, offset + position, image_seed, versions, user)

    def _finish(
        self,
        image: Image.Image,
        request: GenerationRequest,
        model: LoadedModel,
        index: int,
        seed: int,
        versions: dict[str, str],
        user: str | None,
    ) -> GeneratedImage:
        infotext = md.build_infotext(
            request, seed, model.source.name, model.short_hash, f"kakumei {kakumei.__version__}"
        )
        meta: dict[str, Any] = {
            "version": md.METADATA_VERSION,
            "request": request.model_dump(mode="json"),
            "image_index": index,
            "seed": seed,
            "model": {"ref": model.source.ref, "name": model.source.name, "sha256": model.sha256},
            "device": model.device.type,
            "dtype": dtype_name(model.dtype),
            "software": versions,
        }
        if user is not None:
            meta["user"] = user
        return GeneratedImage(image, md.encode_png(image, infotext, meta), seed, index, infotext, meta)


def validate_request(data: dict[str, Any]) -> GenerationRequest:
    """Build a request from untrusted data, turning pydantic errors into InvalidRequest."""
    from pydantic import ValidationError

    from kakumei.schemas import validation_message

    try:
        return GenerationRequest(**data)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from None
