"""Device and precision: CUDA, then MPS, then CPU; half precision on a GPU, bf16 on CPUs
that compute it natively."""

from __future__ import annotations

import torch

from kakumei.engine.deferred import defer_diffusers_imports
from kakumei.errors import ConfigError

defer_diffusers_imports()  # every engine path that reaches diffusers imports this module first

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available to torch; use --device cpu or auto")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for, but MPS is not available; use --device cpu or auto")
    if requested not in ("cuda", "mps", "cpu"):
        raise ConfigError(f"unknown device {requested!r}; known: auto, cuda, mps, cpu")
    return torch.device(requested)


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """auto: half precision on a GPU, float32 on a CPU to load in; engine/speed.py then moves
    full-size models to bf16 on CPUs that compute it natively."""
    if requested == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if requested not in _DTYPES:
        raise ConfigError(f"unknown dtype {requested!r}; known: auto, {', '.join(_DTYPES)}")
    return _DTYPES[requested]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quiet_libraries() -> None:
    """Silence diffusers/transformers load bars and advisory warnings: kakumei's own output
    (one progress bar, one line per image) is what a user should see. Called by entry points."""
    import warnings

    import transformers

    # transformers first: importing diffusers already logs through it.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torchsde|diffusers|transformers)\..*")
    warnings.filterwarnings("ignore", message=r".*torchvision.*")
