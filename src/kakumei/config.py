"""Settings: the only reader of KAKUMEI_* environment variables and kakumei.toml.

Precedence, lowest first: defaults, `kakumei.toml` (in the data dir, or the file named by
KAKUMEI_CONFIG), environment, CLI flags (passed as `overrides`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kakumei.errors import ConfigError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# 64 MiB: one input image at its largest file size (schemas.MAX_INPUT_BYTES = 32 MiB) in base64
# (4/3) and a mask, or a few photographs of 4096x4096 as PNG. Real img2img inputs are far
# smaller; a server that must take more (8 init images of 32 MiB each) raises it. Not more by
# default: a body is in memory about twice while it is parsed and its images are checked, and
# bodies over 1 MiB are read max_body_bytes at a time (server/limits.py), so this bounds both
# what a burst of uploads costs in memory and how long each upload waits for the one before.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024

DeviceName = Literal["auto", "cuda", "mps", "cpu"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]


class Settings(BaseModel):
    """Everything configurable. Components receive the parts they need."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(default_factory=lambda: Path.home() / ".kakumei")
    model: str = DEFAULT_MODEL
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    low_memory: bool = False
    compile: bool = False
    # GiB of converted UNet/VAE weights of local diffusers folders kept in <home>/cache/weights,
    # so that repeat runs map them instead of converting (0: no cache).
    weight_cache_gb: float = Field(8.0, ge=0)
    # DeepCache (engine/deepcache.py): the whole UNet runs every N-th step, the steps between
    # reuse its deep features; 0 is off. Faster, but the image changes (benchmarks/accelerations.py).
    deepcache_interval: int = 0
    output_dir: Path | None = None
    hf_offline: bool = False
    allow_pickle: bool = False
    # Japanese in a prompt is translated to English before encoding: "dictionary" (offline,
    # the `ja` extra), "off", or the path of a local translation model folder (transformers).
    translator: str = Field("dictionary", min_length=1)

    # server
    host: str = "127.0.0.1"
    port: int = 7860
    database: str | None = None
    # Where generated images' bytes live: "database" (every server sharing it reaches them),
    # "files" (the data folder, one machine), "auto": the database on PostgreSQL, files on SQLite.
    image_store: Literal["auto", "files", "database", "s3"] = "auto"
    # An S3-compatible bucket for images and input images ("s3"; "auto" with a bucket set);
    # keys left empty come from boto3's usual places (AWS_* environment, ~/.aws, a role).
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = Field(None, repr=False)
    # Rate limits, offences and timeouts in Redis (redis://host:6379/0) instead of the
    # database, shared by every server with the same URL and prefix; None: the database.
    redis_url: str | None = None
    redis_prefix: str = "kakumei:"
    local_worker: bool = True
    # Threads serving blocking requests at once; each holds at most one database connection,
    # so servers sharing one PostgreSQL need servers x (this + a few) under its max_connections.
    request_threads: int = Field(40, ge=1)
    allow_anonymous: bool = True
    # A worker that sends no heartbeat for this long has lost its job back to the queue.
    lease_seconds: float = Field(30.0, gt=0)
    # AI Horde workers send no heartbeats: a job popped through /api/v2 is held this long.
    horde_lease_seconds: float = Field(300.0, gt=0)
    # Lost leases before a job fails instead of going back to the queue.
    max_attempts: int = Field(3, ge=1)
    # The local worker claims up to this many compatible jobs as one batch, and
    # prefers jobs for its loaded model, both only within this many job-times of the fairest
    # choice (its group's counter + slack x that job's charge to the group; 1: about one
    # job-time of the worker, 0: always the fairest job alone).
    # None ("auto"): chosen by the device the worker runs on (worker/loop.py batch_jobs_for).
    worker_batch_jobs: int | None = Field(None, ge=1, le=16)
    fairness_slack: float = Field(1.0, ge=0)
    # Remote workers: share of an untrusted worker's jobs re-run by a trusted worker
    # (trusted ones are spot-checked at a tenth of it), the perceptual distance a re-run may
    # differ by (benchmarks/verification.py: bf16 and fp16 differ from fp32 by 0.003 at most,
    # half the steps or another prompt by 0.008 or more, another seed or model by 0.12 or more),
    # matching re-runs in a row that make a worker trusted, and mismatches that quarantine it.
    verify_sample_rate: float = Field(0.1, ge=0.0, le=1.0)
    verify_max_distance: float = Field(0.006, gt=0.0, le=1.0)
    verify_trust_after: int = Field(5, ge=1)
    verify_quarantine_after: int = Field(1, ge=1)
    # A new worker's first results are all re-run (its credit waits in escrow until it is
    # trusted); worker keys one person may hold, and new ones per network a day (0: no limit).
    verify_check_first: int = Field(5, ge=0)
    worker_keys_per_user: int = Field(5, ge=0)
    worker_keys_per_network_day: int = Field(10, ge=0)
    # `kakumei worker`: the server to work for and this machine's worker key.
    worker_server: str | None = None
    worker_key: str | None = None
    # How AUTOMATIC1111 API clients (/sdapi/v1) prove who they are: "key" (Authorization:
    # Bearer KEY, as the native API), "basic" (HTTP Basic with the user name and the API key as
    # password, which is what A1111's --api-auth taught its clients), or "both".
    a1111_auth: Literal["key", "basic", "both"] = "both"

    # Merit and admission (fairness/credits.py, fairness/limits.py; README "Fair use").
    anonymous_weight: float = Field(0.5, gt=0)
    merit_max_bonus: float = Field(4.0, ge=0)
    merit_half_balance: float = Field(100.0, gt=0)
    # Queued jobs one person may have (a keyless caller: one address).
    max_queued_jobs: int = Field(20, ge=1)
    # Free-tier people (no balance, no admin weight) of one network group: queued jobs in all,
    # and how many of them may have jobs queued at once. The group's share of the machine is
    # one person's however many keys it holds, so the second cap need not be tight: it is
    # there so that a family or a class behind one address can all queue, not to stop keys.
    free_queued_per_ip: int = Field(20, ge=1)
    free_users_per_ip: int = Field(8, ge=1)
    anonymous_max_queued: int = Field(100, ge=1)
    # Fair share among people (fairness/groups.py): people without merit are grouped by the
    # network their requests come from (these prefix lengths), and a group gets what one
    # person gets. Off: every person is a group of their own.
    network_groups: bool = True
    group_prefix_v4: int = Field(24, ge=8, le=32)
    group_prefix_v6: int = Field(56, ge=16, le=128)
    # Accounts: who may sign up ("off": only the operator makes users; "invite": with a code
    # from `kakumei users invite`; "open": anyone), sign-ups and guest sessions one network
    # may start an hour, the shortest password, the API keys one user may hold, and the
    # wrong passwords one network may try an hour before sign-in waits.
    signup: Literal["off", "invite", "open"] = "off"
    signups_per_network_per_hour: int = Field(5, ge=1)
    guests_per_network_per_hour: int = Field(30, ge=1)
    min_password_length: int = Field(10, ge=8, le=128)
    max_keys_per_user: int = Field(20, ge=1)
    failed_sign_ins_per_network_per_hour: int = Field(20, ge=1)
    # Token buckets: requests a minute and burst, per API key and per client address (0: off).
    key_rate_per_minute: float = Field(30.0, ge=0)
    key_burst: int = Field(10, ge=0)
    ip_rate_per_minute: float = Field(60.0, ge=0)
    ip_burst: int = Field(20, ge=0)
    # Free-tier caps with an idle queue; they slide down to one 512x512, 20-step image as the
    # queue fills to `free_busy_queue` jobs.
    free_max_pixels: int = Field(1024 * 1024, ge=64 * 64)
    free_max_steps: int = Field(50, ge=1)
    free_max_images: int = Field(4, ge=1)
    free_busy_queue: int = Field(100, ge=1)
    # Cost factors calibrated from workers' run seconds: the samples a model (and the SD 1.5
    # reference) needs on one worker class before its observed factor replaces the fixed one,
    # and how far from the fixed factor it may go (a factor of `clamp` either way).
    cost_calibration_min_samples: int = Field(20, ge=1)
    cost_calibration_clamp: float = Field(4.0, ge=1.0)
    # Regular expressions (case-insensitive) a prompt may not match; one per line in the env.
    prompt_blocklist: list[str] = Field(default_factory=list)
    # Rule breaks by one address within the window before timeouts start; the first timeout,
    # doubling with each further offence up to the longest.
    offence_threshold: int = Field(5, ge=1)
    offence_window_seconds: float = Field(3600.0, gt=0)
    timeout_seconds: float = Field(60.0, gt=0)
    timeout_max_seconds: float = Field(86400.0, gt=0)
    # Terms (e.g. the model's license) each user accepts once before their first job; unset:
    # none asked.
    terms: str | None = None
    terms_url: str | None = None

    # Hostile input: proxies whose X-Forwarded-For is believed (CIDRs; none: the header is
    # ignored), and event streams one user (anonymous: one address) may hold open at once.
    trusted_proxies: list[str] = Field(default_factory=list)
    max_event_streams_per_user: int = Field(8, ge=1)

    @field_validator("worker_batch_jobs", mode="before")
    @classmethod
    def _auto_batch_jobs(cls, value: Any) -> Any:
        # "auto" (any case) in the environment or TOML is the default: chosen per device.
        if isinstance(value, str) and value.strip().lower() == "auto":
            return None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        networks = []
        for entry in value:
            try:
                networks.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"trusted_proxies entry {entry!r} is not an IP address or CIDR range "
                                 "such as 10.0.0.0/8") from None
        return networks

    # Hostile input at the HTTP edge (server/limits.py): the largest request body accepted
    # (answered 413 before it is read), and the web origins allowed to call the API from a
    # browser (CORS; empty: none, and no CORS headers are sent).
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies", "cors_origins", mode="before")
    @classmethod
    def _word_list(cls, value: Any) -> Any:
        # The environment holds them separated by commas or spaces; TOML holds a list.
        if isinstance(value, str):
            return [o for o in re.split(r"[,\s]+", value) if o]
        return value

    @field_validator("prompt_blocklist", mode="before")
    @classmethod
    def _blocklist_lines(cls, value: Any) -> Any:
        # The environment holds one pattern per line; TOML holds a list.
        if isinstance(value, str):
            return [line for line in value.splitlines() if line.strip()]
        return value

    @field_validator("deepcache_interval")
    @classmethod
    def _deepcache_interval(cls, value: int) -> int:
        if value == 1:
            raise ValueError("deepcache_interval 1 would run the whole UNet at every step: use 0 for off, or 2 to 10")
        if not (value == 0 or 2 <= value <= 10):
            raise ValueError(f"deepcache_interval must be 0 (off) or 2 to 10, got {value}")
        return value

    @field_validator("prompt_blocklist")
    @classmethod
    def _blocklist_compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"prompt_blocklist pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return value

    @property
    def outputs(self) -> Path:
        return self.output_dir or (self.home / "outputs")

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.home / 'kakumei.db'}"


# Environment variable -> settings field. Strings are parsed by pydantic.
_ENV_FIELDS = {
    "KAKUMEI_HOME": "home",
    "KAKUMEI_MODEL": "model",
    "KAKUMEI_DEVICE": "device",
    "KAKUMEI_DTYPE": "dtype",
    "KAKUMEI_LOW_MEMORY": "low_memory",
    "KAKUMEI_COMPILE": "compile",
    "KAKUMEI_WEIGHT_CACHE_GB": "weight_cache_gb",
    "KAKUMEI_DEEPCACHE_INTERVAL": "deepcache_interval",
    "KAKUMEI_OUTPUT_DIR": "output_dir",
    "KAKUMEI_ALLOW_PICKLE": "allow_pickle",
    "KAKUMEI_TRANSLATOR": "translator",
    "KAKUMEI_HOST": "host",
    "KAKUMEI_PORT": "port",
    "KAKUMEI_DATABASE": "database",
    "KAKUMEI_IMAGE_STORE": "image_store",
    "KAKUMEI_S3_BUCKET": "s3_bucket",
    "KAKUMEI_S3_ENDPOINT_URL": "s3_endpoint_url",
    "KAKUMEI_S3_REGION": "s3_region",
    "KAKUMEI_S3_ACCESS_KEY_ID": "s3_access_key_id",
    "KAKUMEI_S3_SECRET_ACCESS_KEY": "s3_secret_access_key",
    "KAKUMEI_REDIS_URL": "redis_url",
    "KAKUMEI_REDIS_PREFIX": "redis_prefix",
    "KAKUMEI_LOCAL_WORKER": "local_worker",
    "KAKUMEI_REQUEST_THREADS": "request_threads",
    "KAKUMEI_ALLOW_ANONYMOUS": "allow_anonymous",
    "KAKUMEI_LEASE_SECONDS": "lease_seconds",
    "KAKUMEI_HORDE_LEASE_SECONDS": "horde_lease_seconds",
    "KAKUMEI_MAX_ATTEMPTS": "max_attempts",
    "KAKUMEI_WORKER_BATCH_JOBS": "worker_batch_jobs",
    "KAKUMEI_FAIRNESS_SLACK": "fairness_slack",
    "KAKUMEI_ANONYMOUS_WEIGHT": "anonymous_weight",
    "KAKUMEI_MERIT_MAX_BONUS": "merit_max_bonus",
    "KAKUMEI_MERIT_HALF_BALANCE": "merit_half_balance",
    "KAKUMEI_MAX_QUEUED_JOBS": "max_queued_jobs",
    "KAKUMEI_FREE_QUEUED_PER_IP": "free_queued_per_ip",
    "KAKUMEI_FREE_USERS_PER_IP": "free_users_per_ip",
    "KAKUMEI_ANONYMOUS_MAX_QUEUED": "anonymous_max_queued",
    "KAKUMEI_NETWORK_GROUPS": "network_groups",
    "KAKUMEI_GROUP_PREFIX_V4": "group_prefix_v4",
    "KAKUMEI_GROUP_PREFIX_V6": "group_prefix_v6",
    "KAKUMEI_SIGNUP": "signup",
    "KAKUMEI_SIGNUPS_PER_NETWORK_PER_HOUR": "signups_per_network_per_hour",
    "KAKUMEI_GUESTS_PER_NETWORK_PER_HOUR": "guests_per_network_per_hour",
    "KAKUMEI_MIN_PASSWORD_LENGTH": "min_password_length",
    "KAKUMEI_MAX_KEYS_PER_USER": "max_keys_per_user",
    "KAKUMEI_FAILED_SIGN_INS_PER_NETWORK_PER_HOUR": "failed_sign_ins_per_network_per_hour",
    "KAKUMEI_KEY_RATE_PER_MINUTE": "key_rate_per_minute",
    "KAKUMEI_KEY_BURST": "key_burst",
    "KAKUMEI_IP_RATE_PER_MINUTE": "ip_rate_per_minute",
    "KAKUMEI_IP_BURST": "ip_burst",
    "KAKUMEI_FREE_MAX_PIXELS": "free_max_pixels",
    "KAKUMEI_FREE_MAX_STEPS": "free_max_steps",
    "KAKUMEI_FREE_MAX_IMAGES": "free_max_images",
    "KAKUMEI_FREE_BUSY_QUEUE": "free_busy_queue",
    "KAKUMEI_COST_CALIBRATION_MIN_SAMPLES": "cost_calibration_min_samples",
    "KAKUMEI_COST_CALIBRATION_CLAMP": "cost_calibration_clamp",
    "KAKUMEI_PROMPT_BLOCKLIST": "prompt_blocklist",
    "KAKUMEI_OFFENCE_THRESHOLD": "offence_threshold",
    "KAKUMEI_OFFENCE_WINDOW_SECONDS": "offence_window_seconds",
    "KAKUMEI_TIMEOUT_SECONDS": "timeout_seconds",
    "KAKUMEI_TIMEOUT_MAX_SECONDS": "timeout_max_seconds",
    "KAKUMEI_TERMS": "terms",
    "KAKUMEI_TERMS_URL": "terms_url",
    "KAKUMEI_VERIFY_SAMPLE_RATE": "verify_sample_rate",
    "KAKUMEI_VERIFY_MAX_DISTANCE": "verify_max_distance",
    "KAKUMEI_VERIFY_TRUST_AFTER": "verify_trust_after",
    "KAKUMEI_VERIFY_QUARANTINE_AFTER": "verify_quarantine_after",
    "KAKUMEI_VERIFY_CHECK_FIRST": "verify_check_first",
    "KAKUMEI_WORKER_KEYS_PER_USER": "worker_keys_per_user",
    "KAKUMEI_WORKER_KEYS_PER_NETWORK_DAY": "worker_keys_per_network_day",
    "KAKUMEI_WORKER_SERVER": "worker_server",
    "KAKUMEI_WORKER_KEY": "worker_key",
    "KAKUMEI_A1111_AUTH": "a1111_auth",
    "KAKUMEI_TRUSTED_PROXIES": "trusted_proxies",
    "KAKUMEI_MAX_EVENT_STREAMS_PER_USER": "max_event_streams_per_user",
    "KAKUMEI_MAX_BODY_BYTES": "max_body_bytes",
    "KAKUMEI_CORS_ORIGINS": "cors_origins",
}


def _truthy_env(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from defaults, kakumei.toml, environment and `overrides`.

    `overrides` holds CLI flags; None values mean "flag not given".
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    home = Path(env["KAKUMEI_HOME"]).expanduser() if env.get("KAKUMEI_HOME") else Path.home() / ".kakumei"
    config_file = Path(env["KAKUMEI_CONFIG"]) if env.get("KAKUMEI_CONFIG") else home / "kakumei.toml"
    if config_file.is_file():
        try:
            values.update(tomllib.loads(config_file.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file} is not valid TOML: {exc}") from None
    for var, field in _ENV_FIELDS.items():
        if env.get(var) not in (None, ""):
            values[field] = env[var]
    values["home"] = values.get("home", home)
    # huggingface_hub's own switch also means "do not try the network".
    values.setdefault("hf_offline", _truthy_env(env.get("HF_HUB_OFFLINE")))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid setting: {problems}") from None
