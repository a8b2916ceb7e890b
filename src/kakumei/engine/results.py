"""What generation gives back: progress of a step, finished images, a request's result.

Its own module so that the passes (which report progress) and the engine (which returns
results) both use these types without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from kakumei.engine.preview import latents_to_preview
from kakumei.schemas import GenerationRequest


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
