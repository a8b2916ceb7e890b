"""Settings: the only reader of KAKUMEI_* environment variables and kakumei.toml.

Precedence, lowest first: defaults, `kakumei.toml` (in the data dir, or the file named by
KAKUMEI_CONFIG), environment, CLI flags (passed as `overrides`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kakumei.errors import ConfigError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

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
    output_dir: Path | None = None
    hf_offline: bool = False
    allow_pickle: bool = False

    # server
    host: str = "127.0.0.1"
    port: int = 7860
    database: str | None = None
    local_worker: bool = True
    allow_anonymous: bool = True
    # A worker that sends no heartbeat for this long has lost its job back to the queue.
    lease_seconds: float = Field(30.0, gt=0)
    # Lost leases before a job fails instead of going back to the queue.
    max_attempts: int = Field(3, ge=1)
    # Remote workers (issue 6). Share of an untrusted worker's jobs re-run by a trusted worker
    # (trusted ones are spot-checked at a tenth of it), the perceptual distance a re-run may
    # differ by (bf16 and fp32 machines differ slightly; wrong pictures differ by 0.08 or more),
    # matching re-runs in a row that make a worker trusted, and mismatches that quarantine it.
    verify_sample_rate: float = Field(0.1, ge=0.0, le=1.0)
    verify_max_distance: float = Field(0.04, gt=0.0, le=1.0)
    verify_trust_after: int = Field(5, ge=1)
    verify_quarantine_after: int = Field(2, ge=1)
    # `kakumei worker`: the server to work for and this machine's worker key.
    worker_server: str | None = None
    worker_key: str | None = None
    # How AUTOMATIC1111 API clients (/sdapi/v1) prove who they are: "key" (Authorization:
    # Bearer KEY, as the native API), "basic" (HTTP Basic with the user name and the API key as
    # password, which is what A1111's --api-auth taught its clients), or "both".
    a1111_auth: Literal["key", "basic", "both"] = "both"

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
    "KAKUMEI_OUTPUT_DIR": "output_dir",
    "KAKUMEI_ALLOW_PICKLE": "allow_pickle",
    "KAKUMEI_HOST": "host",
    "KAKUMEI_PORT": "port",
    "KAKUMEI_DATABASE": "database",
    "KAKUMEI_LOCAL_WORKER": "local_worker",
    "KAKUMEI_ALLOW_ANONYMOUS": "allow_anonymous",
    "KAKUMEI_LEASE_SECONDS": "lease_seconds",
    "KAKUMEI_MAX_ATTEMPTS": "max_attempts",
    "KAKUMEI_VERIFY_SAMPLE_RATE": "verify_sample_rate",
    "KAKUMEI_VERIFY_MAX_DISTANCE": "verify_max_distance",
    "KAKUMEI_VERIFY_TRUST_AFTER": "verify_trust_after",
    "KAKUMEI_VERIFY_QUARANTINE_AFTER": "verify_quarantine_after",
    "KAKUMEI_WORKER_SERVER": "worker_server",
    "KAKUMEI_WORKER_KEY": "worker_key",
    "KAKUMEI_A1111_AUTH": "a1111_auth",
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
