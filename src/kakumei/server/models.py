"""Response bodies of the native API."""

from __future__ import annotations

from pydantic import BaseModel, Field

from kakumei.schemas import GenerationRequest


class Progress(BaseModel):
    step: int | None
    total: int | None


class ImageRef(BaseModel):
    id: str
    url: str
    seed: int
    index: int


class JobOut(BaseModel):
    id: str
    state: str = Field(description="queued, leased, running, succeeded, failed or cancelled")
    model: str
    request: GenerationRequest = Field(
        description="the request as queued; input images (init_images, mask) appear as sha256: references"
    )
    cost: float = Field(description="compute units: 1 = one 512x512 image at 20 steps on SD 1.5")
    queue_position: int | None = Field(
        None, description="jobs that start before this one under fair sharing (0: next); null when not queued"
    )
    eta_seconds: float | None = Field(None, description="estimated seconds until finished")
    attempts: int
    cancel_requested: bool
    progress: Progress | None = None
    seed: int | None = None
    error: str | None = None
    images: list[ImageRef] = []
    events_url: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class JobList(BaseModel):
    jobs: list[JobOut]


class Health(BaseModel):
    status: str
    database: str
