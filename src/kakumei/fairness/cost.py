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

from collections.abc import Callable, Mapping
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
        return self.units_with(model_factor)

    @property
    def base_units(self) -> float:
        """Units before the model factor: steps x pixels relative to the reference image."""
        return (self.steps / REFERENCE_STEPS) * (self.width * self.height / REFERENCE_PIXELS)

    def units_with(self, factor: Callable[[str], float]) -> float:
        return self.base_units * factor(self.model)


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


def request_cost(request: GenerationRequest, model: str, factor: Callable[[str], float] = model_factor) -> float:
    """Compute units of `request` run on `model` (the resolved model name); `factor` gives each
    pass's model factor (the fixed ones, or `calibrated_factors`)."""
    return sum(p.units_with(factor) for p in passes(request, model)) * request.image_count


def base_units(request: GenerationRequest, model: str) -> float | None:
    """Units of `request` before any model factor, or None when its passes run on more than one
    model (a refiner): such a run's seconds cannot be told apart per model."""
    runs = passes(request, model)
    if any(p.model != model for p in runs):
        return None
    return sum(p.base_units for p in runs) * request.image_count


# -- calibration ------------------------------------------------------------------------------
#
# Workers' run seconds per base unit, per (model, worker class), say what a model really costs
# relative to SD 1.5 on the same hardware. The fixed factors stay until a model and the
# reference have enough samples on a common worker class; the calibrated factor is clamped
# around the fixed one, so that a worker reporting false seconds cannot move prices far.


@dataclass(frozen=True)
class Speed:
    """Observed run seconds per base unit (moving average) and how many samples made it."""

    seconds_per_unit: float
    samples: int


# (model, worker class) -> its observed speed.
Observed = Mapping[tuple[str, str], Speed]


def reference_speeds(observed: Observed, min_samples: int) -> dict[str, float]:
    """Seconds per unit of the reference class (models whose fixed factor is 1, SD 1.5) per
    worker class, weighted by samples, over the models with at least `min_samples`."""
    totals: dict[str, tuple[float, int]] = {}
    for (model, worker_class), speed in observed.items():
        if model_factor(model) != 1.0 or speed.samples < min_samples or speed.seconds_per_unit <= 0:
            continue
        weighted, n = totals.get(worker_class, (0.0, 0))
        totals[worker_class] = (weighted + speed.seconds_per_unit * speed.samples, n + speed.samples)
    return {wc: weighted / n for wc, (weighted, n) in totals.items()}


def calibrated_factor(model: str, observed: Observed, *, min_samples: int, clamp: float) -> float:
    """`model`'s factor: its seconds per unit over the reference's on each worker class where
    both have `min_samples`, averaged over those classes and clamped to [fixed / clamp,
    fixed x clamp]; the fixed factor until then."""
    fixed = model_factor(model)
    refs = reference_speeds(observed, min_samples)
    ratios = [
        speed.seconds_per_unit / refs[wc]
        for (m, wc), speed in observed.items()
        if m == model and wc in refs and speed.samples >= min_samples and speed.seconds_per_unit > 0
    ]
    if not ratios:
        return fixed
    ratio = sum(ratios) / len(ratios)
    return min(fixed * clamp, max(fixed / clamp, ratio))


def calibrated_factors(observed: Observed, *, min_samples: int, clamp: float) -> Callable[[str], float]:
    """A `factor` for request_cost that reads `observed`."""
    return lambda model: calibrated_factor(model, observed, min_samples=min_samples, clamp=clamp)


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
