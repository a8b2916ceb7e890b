"""Pydantic models shared by every layer: the engine, the CLI, the server, workers, APIs.

Field names follow AUTOMATIC1111 so that its clients map onto them one to one.
Validation happens here, once, with messages that say what is allowed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A1111 sampler names -> whether the sampler takes a sigma schedule (Karras, ...).
# The diffusers classes behind them live in engine/samplers.py; this table is pure data so
# that the server can validate requests without importing torch.
SAMPLERS: dict[str, bool] = {
    "Euler": True,
    "Euler a": False,
    "Heun": True,
    "LMS": True,
    "DPM++ 2M": True,
    "DPM++ 2M SDE": True,
    "DPM++ 3M SDE": True,
    "DPM++ SDE": True,
    "DPM++ 2S a": False,
    "DPM2": True,
    "DPM2 a": True,
    "DDIM": False,
    "PLMS": False,
    "UniPC": True,
    "LCM": False,
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# Schedules: "Automatic" keeps the sampler's own; "SGM Uniform" is trailing timestep spacing
# and applies to every sampler; the sigma schedules apply where SAMPLERS says True.
SCHEDULE_NAMES: tuple[str, ...] = ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Beta")
SIGMA_SCHEDULES = frozenset({"Karras", "Exponential", "Beta"})

MAX_SIDE = 2048
MIN_SIDE = 64
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_N_ITER = 100
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 10_000


def _legacy_sampler_split(name: str) -> tuple[str, str | None]:
    """A1111 before 1.9 folded the schedule into the sampler name ("DPM++ 2M Karras")."""
    for schedule in ("Karras", "Exponential"):
        suffix = f" {schedule}"
        if name.endswith(suffix) and name[: -len(suffix)] in SAMPLERS:
            return name[: -len(suffix)], schedule
    return name, None


class GenerationRequest(BaseModel):
    """One text-to-image request, as every layer of kakumei sees it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    steps: int = Field(20, description=f"denoising steps, 1 to {MAX_STEPS}")
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    width: int = Field(512, description=f"multiple of 8, {MIN_SIDE} to {MAX_SIDE}")
    height: int = Field(512, description=f"multiple of 8, {MIN_SIDE} to {MAX_SIDE}")
    seed: int = Field(-1, description="-1 picks a random seed, which is then recorded")
    batch_size: int = Field(1, description=f"images per batch, 1 to {MAX_BATCH_SIZE}")
    n_iter: int = Field(1, description=f"number of batches, 1 to {MAX_N_ITER}; image i uses seed + i")
    sampler_name: str = Field("Euler a", description="an AUTOMATIC1111 sampler name")
    scheduler: str = Field("Automatic", description="an AUTOMATIC1111 schedule type")
    clip_skip: int = Field(1, ge=1, le=12, description="1 uses the last CLIP layer, 2 the one before, ...")
    model: str | None = Field(None, description="model reference; None means the configured default")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if not 1 <= v <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {v}")
        return v

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int) -> int:
        if v % 8 != 0:
            raise ValueError(f"must be a multiple of 8 (e.g. {max(MIN_SIDE, v - v % 8)}), got {v}")
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise ValueError(f"must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {v}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v != -1 and not 0 <= v <= MAX_SEED:
            raise ValueError(f"seed must be -1 (random) or between 0 and {MAX_SEED}, got {v}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if not 1 <= v <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {v}")
        return v

    @field_validator("n_iter")
    @classmethod
    def _n_iter(cls, v: int) -> int:
        if not 1 <= v <= MAX_N_ITER:
            raise ValueError(f"n_iter must be between 1 and {MAX_N_ITER}, got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _split_legacy_sampler(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sampler_name"), str):
            sampler, schedule = _legacy_sampler_split(data["sampler_name"])
            if schedule is not None and data.get("scheduler") in (None, "Automatic"):
                data = {**data, "sampler_name": sampler, "scheduler": schedule}
        return data

    @model_validator(mode="after")
    def _sampler_and_schedule(self) -> GenerationRequest:
        if self.sampler_name not in SAMPLERS:
            raise ValueError(
                f"unknown sampler {self.sampler_name!r}; known: {', '.join(SAMPLER_NAMES)}"
            )
        if self.scheduler not in SCHEDULE_NAMES:
            raise ValueError(
                f"unknown schedule {self.scheduler!r}; known: {', '.join(SCHEDULE_NAMES)}"
            )
        if self.scheduler in SIGMA_SCHEDULES and not SAMPLERS[self.sampler_name]:
            usable = [n for n, sig in SAMPLERS.items() if sig]
            raise ValueError(
                f"schedule {self.scheduler!r} does not apply to sampler {self.sampler_name!r}; "
                f"use it with one of: {', '.join(usable)}"
            )
        return self

    @property
    def image_count(self) -> int:
        return self.batch_size * self.n_iter


def validation_message(exc: Exception) -> str:
    """One sentence from a pydantic ValidationError (or any exception)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
