"""Engine.generate(request, on_step, cancelled) -> images with their metadata.

The one place generation happens: the CLI, the Python API, and every worker call it. A single
request and a batch shared by several users' requests take the same path: resolve the
request, prepare it (models, inputs, LoRAs, prompt encodings), build one plan per batch
(plan.py), run it (passes.py), write PNG bytes with metadata.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from PIL import Image

import kakumei
from kakumei.config import Settings
from kakumei.engine import metadata as md
from kakumei.engine.batching import split_by
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
from kakumei.engine.passes import run_plan
from kakumei.engine.plan import (
    GenerationExtras,
    PreparedRequest,
    PromptTimeline,
    build_plan,
    check_request_fits,
    prepare_inputs,
)
from kakumei.engine.prompt_cache import PromptCache
from kakumei.engine.prompts import EncodedPrompt, encode_prompts, extract_lora_tags
from kakumei.engine.results import GeneratedImage, GenerationResult, StepProgress
from kakumei.engine.samplers import calls_per_step
from kakumei.engine.seeds import resolve_seed
from kakumei.errors import GenerationCancelled, InvalidRequest
from kakumei.prompt_schedule import ScheduledText, has_schedule, prompt_schedule
from kakumei.schemas import GenerationRequest

__all__ = ["Engine", "GeneratedImage", "GenerationResult", "StepProgress", "library_versions"]

log = logging.getLogger(__name__)


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
        return self._load(self._cache, self.resolve_model_name(ref))

    def _load(self, cache: ModelCache, source: ModelSource) -> LoadedModel:
        """Base models and refiners load alike, each kind into its own cache."""
        key = (source.location, str(self._device), dtype_name(self._dtype))
        return cache.get(
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
                weight_cache_bytes=int(self.settings.weight_cache_gb * (1 << 30)),
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
        resolved = self._resolve(request)
        batches = range(resolved.n_iter) if only_batch is None else [only_batch]
        images: list[GeneratedImage] = []
        try:
            for _, image in self._generate_together([resolved], [user], batches, on_step, cancelled):
                images.append(image)
                if on_image is not None:
                    on_image(image)
        except GenerationCancelled as exc:
            exc.images = images
            raise
        return GenerationResult(request=resolved, seed=resolved.seed, images=images)

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_step: Callable[[StepProgress], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        users: Sequence[str | None] | None = None,
    ) -> list[GenerationResult]:
        """Generate several requests (typically jobs of different users), sharing one batch
        where they are compatible (GenerationRequest.batch_key) and one by one where not.

        Results come back in the order of `requests`. A shared image equals the image its
        request gets alone within float tolerance, not bit for bit.
        """
        resolved = [self._resolve(r) for r in requests]
        who = list(users) if users is not None else [None] * len(resolved)
        images: list[list[GeneratedImage]] = [[] for _ in resolved]
        for group in split_by(range(len(resolved)), lambda i: _share_key(resolved[i], i)):
            members = [resolved[i] for i in group]
            done: list[GeneratedImage] = []
            try:
                # a shared group has one batch (batch_key); a lone request runs all of its own
                batches = range(members[0].n_iter)
                for member, image in self._generate_together(members, [who[i] for i in group], batches, on_step, cancelled):
                    images[group[member]].append(image)
                    done.append(image)
            except GenerationCancelled as exc:
                exc.images = done
                raise
        return [GenerationResult(request=r, seed=r.seed, images=imgs) for r, imgs in zip(resolved, images)]

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

    def _generate_together(
        self,
        requests: list[GenerationRequest],
        users: list[str | None],
        batches: Iterable[int],
        on_step: Callable[[StepProgress], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> Iterator[tuple[int, GeneratedImage]]:
        """The images of `batches` of resolved requests that run together (one request, or
        several that share a batch), each with the position of its request in `requests`."""
        versions = library_versions()
        with ExitStack() as stack:
            # 1. each request's models, inputs and prompt encodings (LoRAs merged meanwhile)
            prepared = [stack.enter_context(self._prepare(r, u)) for r, u in zip(requests, users)]
            # 2. prompts of different lengths cannot share a UNet call: one plan per length
            groups = split_by(prepared, lambda p: p.prompt_shape)
            for batch in batches:
                for group in groups:
                    if cancelled is not None and cancelled():
                        raise GenerationCancelled()
                    plan = build_plan([prepared[i] for i in group], batch)
                    # 3. denoise (one pass, or base + hires / refiner pass) and decode
                    try:
                        images = run_plan(plan, on_step, cancelled, self.settings.deepcache_interval)
                    except GenerationCancelled as exc:
                        # the stopped batch, as far as it got, for the requests that keep it
                        for image, owner, index, seed in zip(exc.partial, plan.owners, plan.indices, plan.seeds):
                            if prepared[group[owner]].request.keep_interrupted:
                                yield group[owner], self._finish(image, prepared[group[owner]], index, seed, versions)
                        raise
                    # 4. metadata and PNG bytes, each image with its own request's
                    for image, owner, index, seed in zip(images, plan.owners, plan.indices, plan.seeds):
                        yield group[owner], self._finish(image, prepared[group[owner]], index, seed, versions)

    @contextmanager
    def _prepare(self, request: GenerationRequest, user: str | None) -> Iterator[PreparedRequest]:
        """Load the request's models, check that it fits them, decode its inputs, and encode
        its prompts; its LoRAs stay merged into the model until the block ends."""
        model = self.load(request.model)
        refiner = None
        if request.refiner_checkpoint:
            refiner = self._load(self._refiners, resolve_model(request.refiner_checkpoint, self.settings.models_dir))
        check_request_fits(request, model, refiner)
        inputs = prepare_inputs(request)
        # LoRA tags out of the text and into the weights, embeddings found by name
        prompt, tags = extract_lora_tags(request.prompt)
        negative, negative_tags = extract_lora_tags(request.negative_prompt)
        loras = self._loras.resolve(tags + negative_tags, model.family)
        with apply_loras(model, loras, self._loras):
            embeddings = self._embeddings.for_text(prompt + " " + negative, model.family)
            timelines: dict[str, PromptTimeline] = {}
            if has_schedule(prompt) or has_schedule(negative):
                schedules = _prompt_schedules(request, prompt, negative)
                texts = list(dict.fromkeys(t for pair in schedules.values() for sched in pair for _, t in sched))
                encoded, used = self._encode(model, texts, request.clip_skip, embeddings, bool(loras))
                timelines = {name: _timeline(pair, texts, encoded) for name, pair in schedules.items() if name != "refiner"}
                cond, uncond = timelines["base"].at(0)
                refiner_conds = None
                if refiner is not None:
                    r_texts = list(dict.fromkeys(t for sched in schedules["refiner"] for _, t in sched))
                    r_encoded, _ = encode_prompts(refiner.pipe, r_texts, request.clip_skip, embeddings)
                    timelines["refiner"] = _timeline(schedules["refiner"], r_texts, r_encoded)
                    refiner_conds = timelines["refiner"].at(0)
            else:
                (cond, uncond), used = self._encode(model, [prompt, negative], request.clip_skip, embeddings, bool(loras))
                refiner_conds = None
                if refiner is not None:
                    (r_cond, r_uncond), _ = encode_prompts(refiner.pipe, [prompt, negative], request.clip_skip, embeddings)
                    refiner_conds = (r_cond, r_uncond)
            extras = GenerationExtras(
                loras=loras, embeddings=[self._embeddings.info(name) for name in used], refiner=refiner, inputs=inputs
            )
            yield PreparedRequest(request, user, model, cond, uncond, refiner_conds, extras, timelines)

    def _encode(
        self, model: LoadedModel, texts: list[str], clip_skip: int, embeddings: dict, loras: bool
    ) -> tuple[list[EncodedPrompt], list[str]]:
        """encode_prompts through the prompt cache. Not cached when LoRA weights are merged
        into the text encoder or textual-inversion vectors are in play (files can change)."""
        key = None if loras or embeddings else (model.sha256, str(model.dtype), tuple(texts), clip_skip)
        return self._prompts.get(key, lambda: encode_prompts(model.pipe, texts, clip_skip, embeddings))

    def _finish(
        self, image: Image.Image, prepared: PreparedRequest, index: int, seed: int, versions: dict[str, str]
    ) -> GeneratedImage:
        request, model, extras = prepared.request, prepared.model, prepared.extras
        infotext = md.build_infotext(
            request, seed, model.source.name, model.short_hash, f"kakumei {kakumei.__version__}", extras.infotext_fields(request)
        )
        meta: dict[str, Any] = {
            "version": md.METADATA_VERSION,
            # Input images are recorded by hash, not carried: a PNG must not hold another PNG.
            "request": request.model_dump(mode="json", exclude={"init_images", "mask", *request.untouched_translation_fields()}),
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
        if self.settings.deepcache_interval:
            # not the exact image of the request: DeepCache changed it (deepcache.py)
            meta["deepcache_interval"] = self.settings.deepcache_interval
        meta.update(extras.metadata())
        if prepared.user is not None:
            meta["user"] = prepared.user
        return GeneratedImage(image, md.encode_png(image, infotext, meta), seed, index, infotext, meta)


Schedule = list[ScheduledText]


def _prompt_schedules(request: GenerationRequest, prompt: str, negative: str) -> dict[str, tuple[Schedule, Schedule]]:
    """The (prompt, negative prompt) schedules of each pass the request runs. Steps count
    the denoising loop's UNet calls, as A1111's do. img2img and inpainting follow A1111 in
    counting from the first step they run, against the schedule of all `steps`; the refiner
    goes on with the base pass's schedule from the step where it takes over (the passes
    count on), and a hires fix's second pass has a schedule of its own (prompt_schedule's
    hires_steps)."""
    per_step = calls_per_step(request.sampler_name)
    steps = request.steps * per_step
    base = (prompt_schedule(prompt, steps), prompt_schedule(negative, steps))
    schedules = {"base": base}
    if request.enable_hr:
        hires = (request.hr_second_pass_steps or request.steps) * per_step
        schedules["hires"] = (prompt_schedule(prompt, steps, hires), prompt_schedule(negative, steps, hires))
    if request.refiner_checkpoint:
        schedules["refiner"] = base
    return schedules


def _timeline(pair: tuple[Schedule, Schedule], texts: list[str], encoded: list[EncodedPrompt]) -> PromptTimeline:
    by_text = dict(zip(texts, encoded))
    cond, uncond = pair
    return PromptTimeline([(u, by_text[t]) for u, t in cond], [(u, by_text[t]) for u, t in uncond])


def _share_key(request: GenerationRequest, position: int) -> Any:
    """Requests with equal keys share a batch. LoRA weights are merged into the model for a
    whole batch, so a request with any LoRA tag (batch_key lets <lyco:...> through) runs
    alone, as does one whose tags are malformed: it then fails with its own message."""
    key = request.batch_key()
    if key is None or has_schedule(request.prompt) or has_schedule(request.negative_prompt):
        # a schedule changes the prompt encodings during the loop: jobs queued before
        # batch_key knew that still run alone
        return ("alone", position)
    try:
        tags = extract_lora_tags(request.prompt)[1] + extract_lora_tags(request.negative_prompt)[1]
    except InvalidRequest:
        return ("alone", position)
    return ("alone", position) if tags else key
