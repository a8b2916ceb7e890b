"""Cross-user batching: several compatible requests (same model, size, sampler, schedule,
steps) run as one batch, each image with its own prompt, CFG scale and seed, and each equal
to the image it would get alone within float tolerance. Which requests are compatible is
GenerationRequest.batch_key() (pure data, so the store can index it without torch); the
batch itself is an ordinary plan (plan.py). This module holds what such a batch needs beyond
a single request's: one CFG scale per image, and grouping.

Batching pays where one UNet call on N latents costs less than N calls: on a GPU by far, on
a CPU a little (benchmarks/batching.py measures both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class PerImageScale:
    """CFG scales, one per image, passed where diffusers takes one `guidance_scale` float.

    diffusers' pipelines use the scale in two ways only: `scale > 1` (is CFG on?) and
    `scale * (cond - uncond)`; this class answers both per image. tests/engine/test_batching.py
    fails if a diffusers upgrade uses it any other way.
    """

    def __init__(self, scales: Sequence[float]) -> None:
        self.scales = [float(s) for s in scales]

    def __gt__(self, other: float) -> bool:
        # CFG runs for the whole batch when any image wants it; an image with scale <= 1
        # then gets uncond + s * (cond - uncond), exactly what its scale asks for.
        return max(self.scales) > other

    def __mul__(self, other: Any) -> Any:
        if isinstance(other, torch.Tensor):
            n = len(self.scales)
            if other.shape[0] != n:
                raise ValueError(f"per-image CFG for {n} images applied to a batch of {other.shape[0]}")
            scale = torch.tensor(self.scales, dtype=other.dtype, device=other.device)
            return other * scale.view(-1, *([1] * (other.dim() - 1)))
        return NotImplemented

    __rmul__ = __mul__

    def __float__(self) -> float:
        # Only reached by code that wants a single number (e.g. a log line).
        return max(self.scales)

    def __repr__(self) -> str:
        return f"PerImageScale({self.scales})"


def guidance_for(scales: Sequence[float]) -> float | PerImageScale:
    """A plain float when every image has the same scale, so that a batch of equal requests
    runs exactly the single-request code path."""
    return float(scales[0]) if len(set(scales)) == 1 else PerImageScale(scales)


def split_by(items: Sequence[Any], key: Callable[[Any], Any]) -> list[list[int]]:
    """Indices of `items` grouped by `key`, groups in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return list(groups.values())
