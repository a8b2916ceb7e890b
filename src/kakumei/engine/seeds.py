"""Initial noise drawn on the CPU from each image's seed, so that the same seed gives the
same image on any device (up to floating-point noise in the denoiser)."""

from __future__ import annotations

import secrets

import torch

from kakumei.schemas import MAX_SEED


def resolve_seed(seed: int) -> int:
    """-1 means "pick one"; the picked seed is then recorded like any other."""
    return secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed


def image_seeds(base_seed: int, count: int, offset: int = 0) -> list[int]:
    """Image i uses base_seed + i (as AUTOMATIC1111 does), wrapping at 2**32."""
    return [(base_seed + offset + i) % (MAX_SEED + 1) for i in range(count)]


def cpu_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def cpu_noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One noise tensor per generator, stacked along the batch axis, in float32 on the CPU.

    Each image's noise depends only on its own seed, never on its batch neighbours.
    """
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])
