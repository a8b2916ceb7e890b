"""Helpers for the engine-breadth tests (imported by name: tests/ is not a package)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def family_ref(home: Path, family: str) -> str:
    return str(home / "models" / f"tiny-{family}")


def gradient_image(size: int = 64) -> Image.Image:
    """A smooth, structured picture (not noise), so distances mean something."""
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def png_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
