"""Reading weight files safely: `.safetensors` always; pickle-based files only as far as the
user allows, because unpickling runs code that the file's author chose."""

from __future__ import annotations

from pathlib import Path

import torch

from kakumei.errors import InvalidRequest, ModelLoadError

SAFE_SUFFIXES = (".safetensors",)
# torch's weights-only unpickler refuses arbitrary objects; .pt/.bin embeddings and LoRAs
# load with it. Full checkpoints (.ckpt) often hold training objects that it refuses, so they
# need the user's explicit permission (KAKUMEI_ALLOW_PICKLE).
RESTRICTED_PICKLE_SUFFIXES = (".pt", ".bin", ".pth")
PICKLE_SUFFIXES = (".ckpt",)


def _pickle_refused(path: Path, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"{what} is a pickle file ({path.name}), which can run code when loaded; kakumei loads it only when "
        "you allow it: set KAKUMEI_ALLOW_PICKLE=1 (or allow_pickle = true in kakumei.toml) if you trust its source, "
        "or convert it to .safetensors"
    )


def read_state_dict(path: Path, allow_pickle: bool, what: str) -> dict[str, torch.Tensor]:
    """All tensors of a weight file, on the CPU; errors say what is wrong with the file."""
    suffix = path.suffix.lower()
    try:
        if suffix in SAFE_SUFFIXES:
            from safetensors.torch import load_file

            return load_file(str(path))
        if suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise _pickle_refused(path, what)
        if suffix not in RESTRICTED_PICKLE_SUFFIXES + PICKLE_SUFFIXES:
            raise InvalidRequest(f"{what}: {path.name} is not a weight file kakumei reads (.safetensors, .pt, .ckpt)")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            if not allow_pickle:
                raise _pickle_refused(path, what) from None
            data = torch.load(path, map_location="cpu", weights_only=False)
    except (InvalidRequest, ModelLoadError):
        raise
    except Exception as exc:  # safetensors and torch raise many types for damaged files
        raise ModelLoadError(f"{what} ({path.name}) cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; the file may be truncated or damaged") from None
    while isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what} ({path.name}) does not hold a dictionary of tensors")
    return data


def safetensors_keys(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a .safetensors header, without reading the weights;
    also proves the file is complete (a truncated file's header promises more bytes than exist)."""
    import json
    import struct

    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8 or header_len > 100_000_000:
                raise ValueError("the header is longer than the file")
            header = json.loads(fh.read(header_len))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end > size:
            raise ValueError(f"the file is {size:,} bytes but its tensors need {8 + header_len + end:,}")
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ModelLoadError(f"{what} ({path.name}) is damaged or truncated: {exc}; download or copy it again") from None
