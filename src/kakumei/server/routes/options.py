"""/api/v1/options: what a client may choose (samplers, schedules, models) and the limits,
read from the same tables that validate requests, so a form never offers what the server
would refuse."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from kakumei import schemas
from kakumei.schemas import GenerationRequest
from kakumei.server.deps import services
from kakumei.server.services import Services

router = APIRouter(prefix="/api/v1", tags=["options"])


class Sampler(BaseModel):
    name: str
    sigma_schedules: bool
    """Whether Karras, Exponential and Beta apply to it."""


class Options(BaseModel):
    samplers: list[Sampler]
    schedules: list[str]
    sigma_schedules: list[str]
    hr_upscalers: list[str]
    models: list[str]
    default_model: str
    allow_anonymous: bool
    limits: dict[str, int | float]
    defaults: dict[str, Any]


@router.get("/options", response_model=Options)
def options(svc: Annotated[Services, Depends(services)]) -> Options:
    """Choices and limits for a generation form; needs no key."""
    defaults = GenerationRequest().model_dump(exclude={"init_images", "mask", "model", "refiner_checkpoint"})
    return Options(
        samplers=[Sampler(name=n, sigma_schedules=s) for n, s in schemas.SAMPLERS.items()],
        schedules=list(schemas.SCHEDULE_NAMES),
        sigma_schedules=sorted(schemas.SIGMA_SCHEDULES),
        hr_upscalers=list(schemas.HR_UPSCALERS),
        models=svc.known_models(),
        default_model=svc.settings.model,
        allow_anonymous=svc.settings.allow_anonymous,
        limits={
            "min_side": schemas.MIN_SIDE,
            "max_side": schemas.MAX_SIDE,
            "max_steps": schemas.MAX_STEPS,
            "max_batch_size": schemas.MAX_BATCH_SIZE,
            "max_n_iter": schemas.MAX_N_ITER,
            "max_seed": schemas.MAX_SEED,
            "max_cfg_scale": 30.0,
            "max_prompt_chars": schemas.MAX_PROMPT_CHARS,
        },
        defaults=defaults,
    )
