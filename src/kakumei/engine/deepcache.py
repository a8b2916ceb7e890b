"""DeepCache (Ma et al. 2023, "DeepCache: Accelerating Diffusion Models for Free"): an
opt-in, training-free speed-up that changes the image a little.

Adjacent denoising steps produce nearly the same high-level (deep) UNet features. With an
interval N, every N-th UNet call runs the whole UNet and keeps the output of the
second-to-last up block; the N-1 calls after it run only the shallow path (conv_in, the
first down block, the last up block, conv_out) and take the deep features from that cache.

The UNet's own forward is left as diffusers wrote it: for the cached calls the deep blocks
are swapped, for the length of one pipeline call, for stand-ins that hand back their input
(down and mid blocks, with as many skip tensors as the real block gives, so that the last up
block still receives its real skip connections) or the cached features. The uniform
schedule of the paper; each pass (hires, refiner) starts with a full call of its own.

Measured by benchmarks/accelerations.py (seconds per image and PSNR against the exact image).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


class _Cache:
    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.calls = 0
        self.reuse = False
        self.deep: torch.Tensor | None = None


def _skipping_down(block: torch.nn.Module, cache: _Cache) -> Any:
    real = block.forward
    outputs = len(block.resnets) + len(getattr(block, "downsamplers", None) or ())

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not cache.reuse:
            return real(*args, **kwargs)
        x = _hidden(args, kwargs)
        return x, (x,) * outputs  # consumed only by the up blocks that are skipped too

    return forward


def _skipping_mid(block: torch.nn.Module, cache: _Cache) -> Any:
    real = block.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        return _hidden(args, kwargs) if cache.reuse else real(*args, **kwargs)

    return forward


def _skipping_up(block: torch.nn.Module, cache: _Cache, keeps: bool) -> Any:
    real = block.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if cache.reuse:
            return cache.deep if keeps else _hidden(args, kwargs)
        out = real(*args, **kwargs)
        if keeps:
            cache.deep = out
        return out

    return forward


def _counting(unet: torch.nn.Module, cache: _Cache) -> Any:
    real = unet.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        cache.reuse = cache.calls % cache.interval != 0 and cache.deep is not None
        cache.calls += 1
        return real(*args, **kwargs)

    return forward


def supports(unet: Any) -> bool:
    """A UNet2DConditionModel-like UNet with deep blocks to skip."""
    return (
        isinstance(unet, torch.nn.Module)
        and len(getattr(unet, "down_blocks", ())) >= 2
        and len(getattr(unet, "up_blocks", ())) >= 2
        and len(unet.down_blocks) == len(unet.up_blocks)
    )


@contextmanager
def deep_cache(unet: Any, interval: int) -> Iterator[None]:
    """Within the block, `unet` reuses its deep features for interval-1 of every `interval`
    calls. Interval 0 (off), or a UNet it does not fit, leaves the UNet untouched."""
    if interval < 2 or not supports(unet):
        yield
        return
    cache = _Cache(interval)
    patched: list[torch.nn.Module] = []

    def patch(module: torch.nn.Module, forward: Any) -> None:
        module.forward = forward  # an instance attribute over the class's forward, removed below
        patched.append(module)

    try:
        for block in list(unet.down_blocks)[1:]:
            patch(block, _skipping_down(block, cache))
        if getattr(unet, "mid_block", None) is not None:
            patch(unet.mid_block, _skipping_mid(unet.mid_block, cache))
        ups = list(unet.up_blocks)[:-1]
        for n, block in enumerate(ups):
            patch(block, _skipping_up(block, cache, keeps=n == len(ups) - 1))
        patch(unet, _counting(unet, cache))
        yield
    finally:
        for module in patched:
            del module.forward
        cache.deep = None
