"""Perceptual distance between two images, for checking a worker's result by re-running it.

Honest workers agree up to floating-point noise (initial noise is drawn on the CPU), but a
bf16 GPU and an fp32 CPU differ in fine detail, so exact bytes cannot be compared. Both
images are reduced to a small grid by area averaging, which keeps composition, shapes and
colours (what a cheat changes) and averages away per-pixel noise (what precision changes).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# 32x32 keeps the layout of a 512x512 image in 16x16-pixel cells.
GRID = 32


def _reduced(image: Image.Image) -> np.ndarray:
    small = image.convert("RGB").resize((GRID, GRID), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def perceptual_distance(a: Image.Image, b: Image.Image) -> float:
    """0.0 for the same picture, up to 1.0; images of different sizes are 1.0 apart."""
    if a.size != b.size:
        return 1.0
    return float(np.abs(_reduced(a) - _reduced(b)).mean())


def png_distance(a: bytes, b: bytes) -> float:
    """`perceptual_distance` of two PNG files' bytes; unreadable images are 1.0 apart."""
    try:
        return perceptual_distance(Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b)))
    except (OSError, ValueError):
        return 1.0
