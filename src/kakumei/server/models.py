"""Response bodies of the native API (built by views.py and accounts.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from kakumei.schemas import MAX_PROMPT_CHARS, GenerationRequest


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
    notes: list[str] = Field([], description="what the job should know, e.g. words of a Japanese prompt no dictionary knew")
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
    model: str | None = None  # the local worker's default model: "ok: REF" or "missing: REF; ..."


class GalleryItem(BaseModel):
    id: str
    url: str
    job_id: str
    index: int
    seed: int = Field(description="the seed this image was made with (the job's seed + index)")
    model: str
    request: dict[str, Any] = Field(
        description="the job's generation request, as submitted; input images appear as sha256: references"
    )
    infotext: str = Field(description="AUTOMATIC1111 infotext: the recipe as it is in the PNG")
    created_at: float


class Gallery(BaseModel):
    images: list[GalleryItem]


class WorkerOut(BaseModel):
    name: str
    owner: str
    status: str = Field(description="new, trusted, suspect or quarantined")
    jobs_done: int
    jobs_failed: int
    units_done: float = Field(description="compute units delivered")
    units_per_second: float | None = Field(None, description="speed over its completed jobs")
    credit_pending: float = Field(0.0, description="credit earned that waits in escrow until the worker is trusted")
    credit_settled: float = Field(0.0, description="credit paid to the owner for this worker's work")
    results_refused: int = Field(0, description="results refused by the cheap checks (blank, wrong size)")
    verifications: dict[str, int] = Field(description="re-run checks by outcome: pending, passed, failed, ...")
    capabilities: dict | None = None
    last_seen_at: float | None = None
    created_at: float


class WorkerList(BaseModel):
    workers: list[WorkerOut]


# -- accounts: /api/v1/me and the admin's view of users ---------------------------------------


class FreeCapsOut(BaseModel):
    max_pixels: int
    max_steps: int
    max_images: int


class Limits(BaseModel):
    max_queued_jobs: int
    queued_jobs: int  # yours (anonymous: from your address)
    queue_length: int  # all queued jobs on the server
    free_caps: FreeCapsOut | None  # None: you are not on the free tier


class Standing(BaseModel):
    allowed: bool
    reason: str | None = None
    retry_after: float | None = None


class Terms(BaseModel):
    required: bool
    accepted: bool
    version: str | None = None
    text: str | None = None
    url: str | None = None
    accept_url: str = "/api/v1/me/terms"


class Group(BaseModel):
    """Whom a caller shares the server with (the fair-share group their next job joins)."""

    kind: Literal["network", "own"]
    network: str | None  # the network, CIDR form, for kind "network"
    others: int  # other people with jobs queued in the group now
    sentence: str  # the above, in words


class Me(BaseModel):
    name: str
    # "operator", "account", "guest", "keyless" (one address's person) or "anonymous"
    kind: str
    anonymous: bool
    admin: bool
    balance: float | None  # None for anonymous visitors, who share one account
    earned: float | None
    spent: float | None
    weight: float
    weight_source: str  # "merit", "admin" or "anonymous"
    virtual_counter: float
    share: float  # fraction of the machine you get while you have jobs queued
    free_tier: bool
    limits: Limits
    standing: Standing
    terms: Terms
    group: Group


class UserOut(BaseModel):
    id: int
    name: str
    anonymous: bool
    admin: bool
    balance: float
    weight: float
    weight_source: str
    virtual_counter: float
    queued_jobs: int
    banned: str | None  # the ban's reason while banned


# -- sign-up, sign-in, guests and keys (server/signup.py) ----------------------------------


class NewAccount(BaseModel):
    """A new account or guest and its first key."""

    name: str
    key: str = Field(description="the API key: send it as 'Authorization: Bearer KEY'; it is not shown again")


class SessionKey(BaseModel):
    key: str = Field(description="a new API key labelled sign-in; it is not shown again")


class KeyOut(BaseModel):
    """One of your API keys (never the key itself)."""

    id: int
    label: str
    created_at: float
    last_used_at: float | None = Field(None, description="about when it was last used (to the minute); null: not yet")
    current: bool = Field(description="whether this request was made with it")
    horde: bool = Field(False, description="a key of the AI Horde's shape, for /api/v2")


class NewKey(BaseModel):
    id: int
    label: str
    key: str = Field(description="the API key; it is not shown again")
    horde: bool = False


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
    signup: str  # who may create an account: "off", "invite" or "open"
    # How Japanese prompts become English: "dictionary", "model" (a local model) or "off".
    translator: str = "dictionary"
    limits: dict[str, int | float]
    defaults: dict[str, Any]


class TranslateIn(BaseModel):
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)


class TranslateOut(BaseModel):
    """The English a job would encode for these prompts, as `POST /api/v1/jobs` translates them."""

    translated: bool = Field(description="whether either prompt changed")
    prompt: str
    negative_prompt: str
    untranslated: list[str] = Field(description="words no dictionary knew, kept as written")
    translator: str
