"""The plan of one denoising batch: which requests' images it makes, with what seeds, prompt
encodings, CFG scales and input images. A single request's batch and a batch shared by
several users' requests are both built by `build_plan` and run by passes.run_plan.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from kakumei.engine.batching import PerImageScale, guidance_for
from kakumei.engine.imageops import prepare_mask, resize_image
from kakumei.engine.lora import LoraFile
from kakumei.engine.models import LoadedModel
from kakumei.engine.prompts import EncodedPrompt
from kakumei.engine.seeds import image_seeds
from kakumei.errors import InvalidRequest
from kakumei.images import decode_image_b64
from kakumei.schemas import INPAINTING_FILLS, MAX_INPUT_BYTES, MAX_INPUT_PIXELS, GenerationRequest, check_request


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
        if out.mask.getbbox() is None:
            # Nothing to repaint: "only masked" would crop to an empty box, and a full repaint
            # would return the input unchanged at the price of a run.
            flipped = " (inverted)" if request.inpainting_mask_invert else ""
            raise InvalidRequest(f"the mask{flipped} is all black, so nothing would be repainted; "
                                 "paint white where the picture should change")
        out.mask_hash = hashlib.sha256(request.mask.encode()).hexdigest()
    return out


def check_request_fits(request: GenerationRequest, model: LoadedModel, refiner: LoadedModel | None) -> None:
    """Refuse combinations the loaded models cannot do, with what would work instead (the
    checks that need no model are schemas.check_request)."""
    arch = model.architecture
    if arch.endswith("-refiner"):
        raise InvalidRequest(
            f"{model.source.name} is an SDXL refiner; use it as refiner_checkpoint with an SDXL base model"
        )
    if arch.endswith("-inpaint") and request.mode != "inpaint":
        raise InvalidRequest(f"{model.source.name} is an inpainting model; give init_images and a mask")
    check_request(request)
    if refiner is not None:
        if model.family != "sdxl":
            raise InvalidRequest(f"a refiner needs an SDXL base model; {model.source.name} is {arch}")
        if refiner.family != "sdxl":
            raise InvalidRequest(f"refiner_checkpoint {refiner.source.name} is {refiner.architecture}, not an SDXL model")


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


@dataclass
class PromptTimeline:
    """The prompt encodings each denoising step of one pass uses, for a prompt or negative
    prompt that edits itself ([from:to:when], [a|b]): entries (until_step, encoding) as in
    prompt_schedule, steps 1-based there and counted from 0 here."""

    cond: list[tuple[int, EncodedPrompt]]
    uncond: list[tuple[int, EncodedPrompt]]

    def at(self, step: int) -> tuple[EncodedPrompt, EncodedPrompt]:
        """The (cond, uncond) of loop step `step` (0-based); past the end, the last entry."""
        return _entry_at(self.cond, step), _entry_at(self.uncond, step)

    def repeated(self, count: int) -> PromptTimeline:
        """One row per image: the same schedule for each of a request's `count` images."""
        return PromptTimeline(
            [(until, _stack([e], [count])) for until, e in self.cond],
            [(until, _stack([e], [count])) for until, e in self.uncond],
        )


def _entry_at(entries: list[tuple[int, EncodedPrompt]], step: int) -> EncodedPrompt:
    for until, encoding in entries:
        if step + 1 <= until:
            return encoding
    return entries[-1][1]


@dataclass
class PreparedRequest:
    """A resolved request with its models loaded and its prompts encoded: what every batch
    of it shares."""

    request: GenerationRequest
    user: str | None
    model: LoadedModel
    cond: EncodedPrompt
    uncond: EncodedPrompt
    refiner_conds: tuple[EncodedPrompt, EncodedPrompt] | None
    extras: GenerationExtras
    # Per pass ("base", "hires", "refiner") when the prompts edit themselves; then cond and
    # uncond are the base pass's first step. Empty for every other request.
    timelines: dict[str, PromptTimeline] = field(default_factory=dict)

    @property
    def prompt_shape(self) -> tuple[int, ...]:
        """Prompts of different lengths (77-token chunks) cannot share a UNet call unpadded,
        and padding would change the image."""
        return tuple(self.cond.embeds.shape)


@dataclass
class BatchPlan:
    """One denoising batch, fully decided; the lists have one entry per image, in batch order."""

    members: list[PreparedRequest]
    owners: list[int]  # the member each image belongs to
    indices: list[int]  # each image's index within its own request
    seeds: list[int]
    cond: EncodedPrompt  # one row per image
    uncond: EncodedPrompt
    refiner_conds: tuple[EncodedPrompt, EncodedPrompt] | None
    guidance: float | PerImageScale
    inputs: Inputs
    offset: int  # index of the first image within its request (for progress and input images)
    timelines: dict[str, PromptTimeline] = field(default_factory=dict)  # one row per image

    @property
    def request(self) -> GenerationRequest:
        """The request whose settings shape the batch: every member agrees on them."""
        return self.members[0].request

    @property
    def model(self) -> LoadedModel:
        return self.members[0].model

    @property
    def refiner(self) -> LoadedModel | None:
        return self.members[0].extras.refiner


def build_plan(members: list[PreparedRequest], batch: int) -> BatchPlan:
    """Batch number `batch` of each member (always 0 for a shared batch: those have one)."""
    if len(members) > 1 and any(
        m.model is not members[0].model or m.extras.loras or m.extras.refiner or m.extras.inputs.images or m.timelines
        for m in members
    ):
        # LoRAs, a refiner, input images and prompt schedules belong to one request;
        # GenerationRequest.batch_key keeps such requests out of shared batches.
        raise ValueError(
            "only text-to-image requests of one model without LoRAs, a refiner or prompt editing share a batch"
        )
    owners: list[int] = []
    indices: list[int] = []
    seeds: list[int] = []
    for n, m in enumerate(members):
        offset = batch * m.request.batch_size
        owners += [n] * m.request.batch_size
        indices += range(offset, offset + m.request.batch_size)
        seeds += image_seeds(m.request.seed, m.request.batch_size, offset)
    counts = [m.request.batch_size for m in members]
    first = members[0]
    refiner_conds = None
    if first.refiner_conds is not None:
        refiner_conds = (_stack([first.refiner_conds[0]], counts), _stack([first.refiner_conds[1]], counts))
    return BatchPlan(
        members=members,
        owners=owners,
        indices=indices,
        seeds=seeds,
        cond=_stack([m.cond for m in members], counts),
        uncond=_stack([m.uncond for m in members], counts),
        refiner_conds=refiner_conds,
        # a plain float when every image has the same scale (as in a single request's batch)
        guidance=guidance_for([m.request.cfg_scale for m in members for _ in range(m.request.batch_size)]),
        inputs=first.extras.inputs,
        offset=indices[0],
        timelines={name: t.repeated(first.request.batch_size) for name, t in first.timelines.items()},
    )


def _stack(encodings: list[EncodedPrompt], counts: list[int]) -> EncodedPrompt:
    """One row per image: each request's encoding repeated for its batch_size images."""
    embeds = torch.cat([e.embeds.repeat(n, 1, 1) for e, n in zip(encodings, counts)])
    if encodings[0].pooled is None:
        return EncodedPrompt(embeds, None)
    return EncodedPrompt(embeds, torch.cat([e.pooled.repeat(n, 1) for e, n in zip(encodings, counts)]))
