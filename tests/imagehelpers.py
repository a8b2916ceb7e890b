"""Input images for tests: seeded noise and a centred inpainting mask, as base64 PNGs.

Imported as `from imagehelpers import ...` (tests/ is on sys.path, as for dbfixtures)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from kakumei.images import encode_image_b64


def noise_b64(side: int, seed: int) -> str:
    """A square RGB image of seeded random pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode_image_b64(Image.fromarray(pixels, "RGB"))


def mask_b64(side: int = 64) -> str:
    """A square mask, white (repaint) in its middle half, black around it."""
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    return encode_image_b64(mask)
