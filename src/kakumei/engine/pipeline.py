"""Engine.generate(request, on_step, cancelled) -> images with their metadata.

The one place generation happens: the CLI, the Python API, and every worker call it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

import kakumei
from kakumei.config import Settings
from kakumei.engine import metadata as md
from kakumei.engine.devices import dtype_name, pick_device, pick_dtype
from kakumei.engine.embeddings import EmbeddingLibrary
from kakumei.engine.lora import LoraLibrary, apply_loras
from kakumei.engine.models import (
    HashCache,
    LoadedModel,
    ModelCache,
    ModelSource,
    load_model,
    memory_budget,
    recommended_defaults,
    resolve_model,
)
from kakumei.engine.batching import guidance_for, split_by
from kakumei.engine.passes import GenerationExtras, Inputs, _BatchRun, check_request_fits, prepare_inputs
from kakumei.engine.prompt_cache import PromptCache
from kakumei.engine.preview import latents_to_preview
from kakumei.engine.prompts import EncodedPrompt, encode_prompts, extract_lora_tags
from kakumei.engine.seeds import image_seeds, resolve_seed
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


def _stack(encodings: list[EncodedPrompt], counts: list[int]) -> EncodedPrompt:
    """One row per image: each request's encoding repeated for its batch_size images."""
    embeds = torch.cat([e.embeds.repeat(n, 1, 1) for e, n in zip(encodings, counts)])
    if encodings[0].pooled is None:
        return EncodedPrompt(embeds, None)
    return EncodedPrompt(embeds, torch.cat([e.pooled.repeat(n, 1) for e, n in zip(encodings, counts)]))


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

    def __init__(self, settings: Settings, cache_size: int = 3) -> None:
        self.settings = settings
        self._device = pick_device(settings.device)
        self._dtype = pick_dtype(self._device, settings.dtype)
        self._cache = ModelCache(cache_size, memory_budget(self._device))
        self._prompts = PromptCache()
        self._hashes = HashCache(settings.home / "cache" / "hashes.json")
        self._refiners = ModelCache(1)
        self._loras = LoraLibrary(settings.models_dir, self._hashes, settings.allow_pickle)
        self._embeddings = EmbeddingLibrary(settings.models_dir, self._hashes, settings.allow_pickle)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def resolve_model_name(self, ref: str | None) -> ModelSource:
        """Check a model reference without loading it (raises ModelNotFound)."""
        return resolve_model(ref or self.settings.model, self.settings.models_dir)

    def loaded_model_refs(self) -> list[str]:
        """References of the loaded models, least recently used first (for model affinity)."""
        return [m.source.ref for m in self._cache.loaded()]

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
                allow_pickle=self.settings.allow_pickle,
                auto_dtype=self.settings.dtype == "auto",
                compile_model=self.settings.compile,
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
        return self._generate_resolved(self._resolve(request), on_step, cancelled, on_image, user, only_batch)

    def _generate_resolved(
        self,
        resolved: GenerationRequest,
        on_step: Callable[[StepProgress], None] | None,
        cancelled: Callable[[], bool] | None,
        on_image: Callable[[GeneratedImage], None] | None,
        user: str | None,
        only_batch: int | None,
    ) -> GenerationResult:
        images: list[GeneratedImage] = []
        try:
            for image in self._iter_images(resolved, on_step, cancelled, user, only_batch):
                images.append(image)
                if on_image is not None:
                    on_image(image)
        except GenerationCancelled as exc:
            exc.images = images
            raise
        return GenerationResult(request=resolved, seed=resolved.seed, images=images)

    def _resolve(self, request: GenerationRequest) -> GenerationRequest:
        """The request as it will run: seed picked, model named, few-step defaults filled."""
        model_ref = request.model or self.settings.model
        # Few-step models (Turbo, LCM, Lightning) need their own steps/CFG; a field the caller
        # set explicitly always wins.
        defaults = {
            k: v for k, v in recommended_defaults(self.resolve_model_name(model_ref).name).items()
            if k not in request.model_fields_set
        }
        return request.model_copy(update={**defaults, "seed": resolve_seed(request.seed), "model": model_ref})

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_step: Callable[[StepProgress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        users: Sequence[str | None] | None = None,
    ) -> list[GenerationResult]:
        """Generate several requests (typically jobs of different users), sharing one batch
        where they are compatible (engine/batching.py) and one by one where not.

        Results come back in the order of `requests`. A shared image equals the image its
        request gets alone within float tolerance, not bit for bit.
        """
        resolved = [self._resolve(r) for r in requests]
        who = list(users) if users is not None else [None] * len(resolved)
        results: list[GenerationResult | None] = [None] * len(resolved)

        def group_key(i: int) -> Any:
            key = resolved[i].batch_key()
            return ("alone", i) if key is None else key

        for group in split_by(range(len(resolved)), group_key):
            if len(group) == 1:
                i = group[0]
                results[i] = self._generate_resolved(resolved[i], on_step, cancelled, None, who[i], None)
                continue
            for i, result in zip(group, self._shared_batch([resolved[i] for i in group], [who[i] for i in group], on_step, cancelled)):
                results[i] = result
        return [r for r in results if r is not None]

    def _encode(
        self, model: LoadedModel, prompt: str, negative: str, clip_skip: int, embeddings: dict, loras: bool
    ) -> tuple[list[EncodedPrompt], list[str]]:
        """encode_prompts through the prompt cache. Not cached when LoRA weights are merged
        into the text encoder or textual-inversion vectors are in play (files can change)."""
        key = None if loras or embeddings else (model.sha256, str(model.dtype), prompt, negative, clip_skip)
        return self._prompts.get(key, lambda: encode_prompts(model.pipe, [prompt, negative], clip_skip, embeddings))

    def _shared_batch(
        self,
        requests: list[GenerationRequest],
        users: list[str | None],
        on_step: Callable[[StepProgress], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> list[GenerationResult]:
        # 1. model, and each request's own prompt encoding
        model = self.load(requests[0].model)
        for req in requests:
            check_request_fits(req, model, None)
        versions = library_versions()
        encoded = []
        for req in requests:
            embeddings = self._embeddings.for_text(req.prompt + " " + req.negative_prompt, model.family)
            (cond, uncond), used = self._encode(model, req.prompt, req.negative_prompt, req.clip_skip, embeddings, False)
            encoded.append((cond, uncond, used))
        results: list[GenerationResult | None] = [None] * len(requests)
        no_inputs = Inputs()  # batch_key() admits text-to-image only: no input images
        # 2. prompts of different lengths (77-token chunks) cannot share a UNet call unpadded,
        #    and padding would change the image: one sub-batch per length
        for sub in split_by(encoded, lambda e: tuple(e[0].embeds.shape)):
            reqs = [requests[i] for i in sub]
            seeds = [s for r in reqs for s in image_seeds(r.seed, r.batch_size, 0)]
            counts = [r.batch_size for r in reqs]
            cond = _stack([encoded[i][0] for i in sub], counts)
            uncond = _stack([encoded[i][1] for i in sub], counts)
            # 3. one denoising loop for all, each image with its own CFG scale and seed
            run = _BatchRun(reqs[0], model, None, cond, uncond, None, no_inputs, seeds, 0, on_step, cancelled)
            run.guidance = guidance_for([r.cfg_scale for r in reqs for _ in range(r.batch_size)])
            images = iter(run.images())
            # 4. back to their requests, with each request's own metadata
            for i, req in zip(sub, reqs):
                extras = GenerationExtras(
                    loras=[], embeddings=[self._embeddings.info(n) for n in encoded[i][2]], refiner=None, inputs=no_inputs
                )
                finished = [
                    self._finish(next(images), req, model, pos, seed, versions, users[i], extras)
                    for pos, seed in enumerate(image_seeds(req.seed, req.batch_size, 0))
                ]
                results[i] = GenerationResult(request=req, seed=req.seed, images=finished)
        return [r for r in results if r is not None]

    def _iter_images(
        self,
        request: GenerationRequest,
        on_step: Callable[[StepProgress], None] | None,
        cancelled: Callable[[], bool] | None,
        user: str | None,
        only_batch: int | None,
    ) -> Iterator[GeneratedImage]:
        # 1. load the model (and refiner) and check that the request fits them
        model = self.load(request.model)
        refiner = self._load_refiner(request.refiner_checkpoint) if request.refiner_checkpoint else None
        check_request_fits(request, model, refiner)
        versions = library_versions()
        inputs = prepare_inputs(request)

        # 2. prompts: LoRA tags out of the text and into the weights, embeddings found by name
        prompt, tags = extract_lora_tags(request.prompt)
        negative, negative_tags = extract_lora_tags(request.negative_prompt)
        loras = self._loras.resolve(tags + negative_tags, model.family)
        with apply_loras(model, loras, self._loras):
            embeddings = self._embeddings.for_text(prompt + " " + negative, model.family)
            (cond, uncond), used = self._encode(model, prompt, negative, request.clip_skip, embeddings, bool(loras))
            refiner_conds = None
            if refiner is not None:
                refiner_conds, _ = encode_prompts(refiner.pipe, [prompt, negative], request.clip_skip, embeddings)
            extras = GenerationExtras(
                loras=loras,
                embeddings=[self._embeddings.info(name) for name in used],
                refiner=refiner,
                inputs=inputs,
            )
            batches = range(request.n_iter) if only_batch is None else [only_batch]
            for batch in batches:
                if cancelled is not None and cancelled():
                    raise GenerationCancelled()
                offset = batch * request.batch_size
                seeds = image_seeds(request.seed, request.batch_size, offset)
                run = _BatchRun(request, model, refiner, cond, uncond, refiner_conds, inputs, seeds, offset, on_step, cancelled)
                # 3. denoise (one pass, or base + hires / refiner pass) and decode
                images = run.images()
                # 4. metadata and PNG bytes
                for position, (image, image_seed) in enumerate(zip(images, seeds)):
                    yield self._finish(image, request, model, offset + position, image_seed, versions, user, extras)

    def _load_refiner(self, ref: str) -> LoadedModel:
        source = resolve_model(ref, self.settings.models_dir)
        key = (source.location, str(self._device), dtype_name(self._dtype))
        return self._refiners.get(
            key,
            lambda: load_model(
                source, self.settings.models_dir, self._hashes, self._device, self._dtype,
                offline=self.settings.hf_offline, low_memory=self.settings.low_memory,
                allow_pickle=self.settings.allow_pickle,
                auto_dtype=self.settings.dtype == "auto",
                compile_model=self.settings.compile,
            ),
        )

    def _finish(
        self,
        image: Image.Image,
        request: GenerationRequest,
        model: LoadedModel,
        index: int,
        seed: int,
        versions: dict[str, str],
        user: str | None,
        extras: GenerationExtras,
    ) -> GeneratedImage:
        infotext = md.build_infotext(
            request, seed, model.source.name, model.short_hash, f"kakumei {kakumei.__version__}", extras.infotext_fields(request)
        )
        meta: dict[str, Any] = {
            "version": md.METADATA_VERSION,
            # Input images are recorded by hash, not carried: a PNG must not hold another PNG.
            "request": request.model_dump(mode="json", exclude={"init_images", "mask"}),
            "image_index": index,
            "seed": seed,
            "model": {
                "ref": model.source.ref,
                "name": model.source.name,
                "sha256": model.sha256,
                "architecture": model.architecture,
            },
            "device": model.device.type,
            "dtype": dtype_name(model.dtype),
            "software": versions,
        }
        meta.update(extras.metadata())
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
