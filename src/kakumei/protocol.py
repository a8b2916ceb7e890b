"""The worker protocol: the types a server and every worker exchange, in process or over HTTP.

The in-process worker of `kakumei serve` and a volunteer's `kakumei worker` run the same loop
against a `JobSource`; the HTTP bodies of `/api/v1/worker/...` are these models as JSON. A
worker knows only this module, never the store's rows: what it holds of a job is a
`LeasedJob`, and every report names the lease, so a report on a lost lease changes nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from kakumei.schemas import GenerationRequest, OneLine, Text

MAX_REASON = 2000  # characters of a failure reason a server keeps
MAX_PREVIEW = 200_000  # characters of a preview data URL (a small PNG)
# What a worker announces is bounded: its model names become one SQL parameter each (and
# PostgreSQL takes at most 65535 in a statement), its numbers go into INTEGER columns.
MAX_MODELS = 1000  # model names in one claim
MAX_MODEL_NAME = 1000  # characters of one model name
MAX_COUNT = 2**31 - 1  # pixels or images: far above any job, within a 32-bit integer

ModelName = Annotated[OneLine, Field(min_length=1, max_length=MAX_MODEL_NAME)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)


class Capabilities(_Message):
    """What a worker can run; None means "anything"."""

    # Over HTTP `max_images` is `max_batch`, the name of the worker's --max-batch flag.
    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    models: tuple[ModelName, ...] | None = Field(
        None, max_length=MAX_MODELS, description=f"models this worker can run, at most {MAX_MODELS}; null: any"
    )
    max_pixels: int | None = Field(
        None, ge=64 * 64, le=MAX_COUNT, description=f"largest width x height it takes, at most {MAX_COUNT}"
    )
    max_images: int | None = Field(
        None, ge=1, le=MAX_COUNT, alias="max_batch", description="most images in one job it takes"
    )
    # The class its run seconds are counted in when cost factors and ETAs are calibrated.
    device: str | None = Field(
        None, max_length=16, pattern=r"^[a-z0-9_]+$", description="the device type it runs on (cpu, cuda, mps)"
    )


class BatchClaim(Capabilities):
    """A claim for several jobs that can share one engine batch."""

    max_jobs: int = Field(1, ge=1, le=16, description="most jobs to lease at once; the server may give fewer")
    prefer_model: ModelName | None = Field(None, description="the model this worker has loaded (model affinity)")


class Lease(_Message):
    """The token a worker holds for a job; every report about the job carries it."""

    lease_id: str


class LeasedJob(Lease):
    """A job leased to a worker: what it needs to run it, nothing else of the server's row."""

    job_id: str
    lease_seconds: float  # heartbeat within this, or the job goes back to the queue
    model: str  # the model the server resolved for the request
    request: GenerationRequest
    cost: float
    attempts: int

    def request_to_run(self) -> GenerationRequest:
        """The request as the engine runs it, naming the server's resolved model."""
        return self.request.model_copy(update={"model": self.model})


class LeasedJobs(_Message):
    leases: list[LeasedJob]


class CheckTask(_Message):
    """A re-run a trusted worker does to check another worker's result: the job's request
    with the seed that worker reported. The server compares the images, not the worker."""

    check_id: int
    model: str
    request: GenerationRequest

    def request_to_run(self) -> GenerationRequest:
        return self.request.model_copy(update={"model": self.model})


class CheckReport(_Message):
    """The re-run's images, by the index of the job's images."""

    images: list[ImageReport]


class Progress(_Message):
    """How far a running job is; no step means the heartbeat only keeps the lease."""

    step: int | None = None
    total: int | None = None
    image_offset: int = 0  # index of the first image of the batch being drawn
    preview: str | None = Field(None, max_length=MAX_PREVIEW, description="small PNG as a data URL")


class HeartbeatReport(Progress, Lease):
    """A heartbeat's body over HTTP: the lease and the progress."""


class HeartbeatReply(_Message):
    """Keep going, or stop."""

    # Over HTTP a lost lease is a 409, so the body carries only `cancel_requested`.
    ok: bool = Field(True, exclude=True)  # False: the lease is gone (expired and re-queued, or the job finished)
    cancel_requested: bool


class ImageReport(_Message):
    """One generated image as a worker reports it; the PNG travels as base64."""

    png_base64: str
    seed: int
    index: int = Field(ge=0)
    infotext: Text = ""  # stored as text: PostgreSQL has no NUL in text
    metadata: dict[str, Any] = {}

    @classmethod
    def of_png(
        cls, png: bytes, *, seed: int, index: int, infotext: str = "", metadata: dict[str, Any] | None = None
    ) -> ImageReport:
        return cls(
            png_base64=base64.b64encode(png).decode("ascii"), seed=seed, index=index, infotext=infotext,
            metadata=metadata or {},
        )

    def png(self) -> bytes:
        """The PNG's bytes; binascii.Error (a ValueError) when the base64 is malformed."""
        return base64.b64decode(self.png_base64, validate=True)


class ImagesReport(Lease):
    """A finished job's images, or those a cancelled job finished before it stopped."""

    seed: int | None = None  # the seed the request ran with (a request's -1 resolved)
    images: list[ImageReport]


class FailureReport(Lease):
    reason: Text = Field(max_length=MAX_REASON)


class Done(_Message):
    ok: bool = True


class WorkerInfo(_Message):
    """Who a worker key is, and the lease time its worker must heartbeat within."""

    name: str
    owner: str
    status: str
    lease_seconds: float
    server_version: str


class JobSource(Protocol):
    """Where a worker gets jobs and sends results. Every call after `claim` names the lease;
    a call on a lost lease changes nothing and answers False (or a reply with `ok` False)."""

    def claim(self, worker_id: str, caps: Capabilities) -> LeasedJob | None: ...

    def heartbeat(self, job_id: str, lease_id: str, progress: Progress | None = None) -> HeartbeatReply: ...

    def complete(self, job_id: str, lease_id: str, images: Sequence[ImageReport], seed: int | None) -> bool: ...

    def fail(self, job_id: str, lease_id: str, reason: str) -> bool: ...

    def acknowledge_cancel(self, job_id: str, lease_id: str, images: Sequence[ImageReport]) -> bool: ...

    def release(self, job_id: str, lease_id: str) -> bool: ...


class BatchJobSource(JobSource, Protocol):
    """A source that can lease several compatible jobs at once; optional, since a worker
    takes one job per claim from a source without it."""

    def claim_batch(
        self, worker_id: str, caps: Capabilities, *, max_jobs: int, prefer_model: str | None, slack: float
    ) -> list[LeasedJob]: ...
