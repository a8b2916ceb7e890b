"""Compute-unit cost of a request: what one job takes from the machine.

One unit is one 512x512 image at 20 steps on an SD 1.5-class model. Cost is proportional to
steps x pixels x images, times a per-model factor, because denoising dominates the run time
and scales with all three.
"""

from __future__ import annotations

from kakumei.schemas import GenerationRequest

REFERENCE_PIXELS = 512 * 512
REFERENCE_STEPS = 20

# Substring of the model name (lower case) -> cost per step and pixel relative to SD 1.5.
# First match wins. Rough figures for a UNet step at equal size; the server can replace them
# with calibrated ones later, and unknown models count as SD 1.5.
MODEL_FACTORS: tuple[tuple[str, float], ...] = (
    ("kakumei:tiny", 1.0),
    ("xl", 2.0),
    ("sd3", 3.0),
    ("flux", 6.0),
)


def model_factor(model: str) -> float:
    """Per-step, per-pixel cost of `model` relative to SD 1.5."""
    name = model.lower()
    for needle, factor in MODEL_FACTORS:
        if needle in name:
            return factor
    return 1.0


def request_cost(request: GenerationRequest, model: str) -> float:
    """Compute units of `request` run on `model` (the resolved model name)."""
    pixels = request.width * request.height
    return (
        (request.steps / REFERENCE_STEPS)
        * (pixels / REFERENCE_PIXELS)
        * request.image_count
        * model_factor(model)
    )
