"""AUTOMATIC1111 sampler and schedule names -> configured diffusers schedulers.

The mapping follows diffusers' own table of A1111/k-diffusion equivalents. Names and which
samplers take a sigma schedule live in kakumei.schemas (pure data, no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kakumei.engine.deferred import defer_scipy
from kakumei.errors import InvalidRequest
from kakumei.schemas import SAMPLERS, SCHEDULE_NAMES, SIGMA_SCHEDULES

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin


defer_scipy()  # before any diffusers scheduler module, the model's own included

# sampler name -> (diffusers scheduler class name, extra config); classes are imported when
# first used, so a run imports the one scheduler module it needs, not fifteen.
_SAMPLER_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 3M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {"set_alpha_to_one": False}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}


def scheduler_class(sampler_name: str) -> type[SchedulerMixin]:
    defer_scipy()
    import diffusers

    return getattr(diffusers, _SAMPLER_TABLE[sampler_name][0])


assert set(_SAMPLER_TABLE) == set(SAMPLERS), "schemas.SAMPLERS and samplers._SAMPLER_TABLE disagree"

_SCHEDULE_CONFIG: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}
assert set(_SCHEDULE_CONFIG) == set(SCHEDULE_NAMES)

# Config keys that belong to one scheduler family and confuse another when carried over.
_DROP_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "algorithm_type", "solver_order")


def calls_per_step(sampler_name: str) -> int:
    """Denoising-loop iterations (UNet calls) per step: 2 for second-order samplers (Heun,
    DPM2, DPM++ SDE), whose diffusers loop visits every step twice, else 1. Prompt schedules
    count these, as A1111's count its sampler's model calls."""
    return int(scheduler_class(sampler_name).order) if sampler_name in _SAMPLER_TABLE else 1


def make_scheduler(sampler_name: str, schedule: str, base_config: dict[str, Any]) -> SchedulerMixin:
    """Build the scheduler for an A1111 sampler + schedule on top of a model's own
    scheduler config (which carries beta schedule, prediction type, timestep count)."""
    if sampler_name not in _SAMPLER_TABLE:
        raise InvalidRequest(f"unknown sampler {sampler_name!r}; known: {', '.join(_SAMPLER_TABLE)}")
    if schedule not in _SCHEDULE_CONFIG:
        raise InvalidRequest(f"unknown schedule {schedule!r}; known: {', '.join(_SCHEDULE_CONFIG)}")
    if schedule in SIGMA_SCHEDULES and not SAMPLERS[sampler_name]:
        raise InvalidRequest(f"schedule {schedule!r} does not apply to sampler {sampler_name!r}")
    cls, extra = scheduler_class(sampler_name), _SAMPLER_TABLE[sampler_name][1]
    config = {k: v for k, v in dict(base_config).items() if k not in _DROP_KEYS and not k.startswith("_")}
    config.update(extra)
    config.update(_SCHEDULE_CONFIG[schedule])
    return cls.from_config(config)
