"""Compute-unit cost of a request: what one job takes from the machine.

One unit is one 512x512 image at 20 steps on an SD 1.5-class model. Cost is proportional to
steps x pixels x images for every pass the job runs, times that pass's model factor, because
denoising dominates the run time and scales with all three:

- text-to-image: `steps` at width x height;
- img2img and inpainting: diffusers runs int(steps x strength) of the steps;
- hires fix: the first pass, plus int(second-pass steps x strength) at the upscaled size;
- SDXL refiner: the base model runs up to `refiner_switch_at` of the steps, the refiner
  model (its own factor) the rest;
- every image of batch_size x n_iter runs all of them.

The free-tier caps (limits.py) read the same figures through `work_size`, so a job cannot
pass them with a small first pass and a large second one.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Pass:
    """One denoising pass of every image of a job: its steps, its size, its model."""

    steps: int
    width: int
    height: int
    model: str

    @property
    def units(self) -> float:
        return (self.steps / REFERENCE_STEPS) * (self.width * self.height / REFERENCE_PIXELS) * model_factor(self.model)


def passes(request: GenerationRequest, model: str) -> list[Pass]:
    """The denoising passes each image of `request` runs on `model`, as the engine runs them."""
    w, h = request.width, request.height
    if request.mode != "txt2img":
        # At least one step: check_request refuses fewer, older queued jobs cost no less.
        return [Pass(max(1, int(request.steps * request.denoising_strength)), w, h, model)]
    if request.enable_hr:
        hr_w, hr_h = request.hr_size
        hr_steps = request.hr_second_pass_steps or request.steps
        return [Pass(request.steps, w, h, model),
                Pass(max(1, int(hr_steps * request.denoising_strength)), hr_w, hr_h, model)]
    if request.refiner_checkpoint:
        base = int(request.steps * request.refiner_switch_at)
        return [Pass(base, w, h, model), Pass(request.steps - base, w, h, request.refiner_checkpoint)]
    return [Pass(request.steps, w, h, model)]


def request_cost(request: GenerationRequest, model: str) -> float:
    """Compute units of `request` run on `model` (the resolved model name)."""
    return sum(p.units for p in passes(request, model)) * request.image_count


@dataclass(frozen=True)
class WorkSize:
    """What the free-tier caps compare: the largest image any pass makes, the most steps any
    pass runs, and the images of the job."""

    pixels: int
    width: int
    height: int
    steps: int
    images: int


def work_size(request: GenerationRequest, model: str = "") -> WorkSize:
    """The request's size for the free-tier caps: the hires output and its steps count."""
    runs = passes(request, model)
    largest = max(runs, key=lambda p: p.width * p.height)
    # Steps as asked: the caps speak of the steps a caller typed, hires second pass included.
    steps = max(request.steps, request.hr_second_pass_steps if request.enable_hr else 0)
    return WorkSize(largest.width * largest.height, largest.width, largest.height, steps, request.image_count)
