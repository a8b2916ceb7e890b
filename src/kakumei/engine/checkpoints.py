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
        raise ModelLoadError(f"{_named(what, path)} cannot be read: the file may be truncated or damaged, so download or copy it again") from exc
    while isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{_named(what, path)} does not hold a dictionary of tensors")
    return data


def _named(what: str, path: Path) -> str:
    """`what` with the file's name, once: callers pass "checkpoint NAME" or just the name."""
    return what if path.name in what else f"{what} ({path.name})"


def safetensors_keys(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a .safetensors header, without reading the weights;
    also proves the file is complete (a truncated file's header promises more bytes than exist)."""
    import json
    import struct

    again = "; download or copy it again"
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            header_len = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else size
            if header_len > size - 8 or header_len > 100_000_000:
                raise ModelLoadError(f"{_named(what, path)} is damaged or truncated: it is shorter than its own header says{again}")
            header = json.loads(fh.read(header_len))
    except OSError as exc:
        raise ModelLoadError(f"{_named(what, path)} cannot be read ({exc.strerror or exc})") from None
    except ValueError:  # not JSON, not UTF-8
        header = None
    tensors = _tensor_entries(header)
    if tensors is None:
        raise ModelLoadError(f"{_named(what, path)} is damaged or not a .safetensors file: its header does not list tensors{again}")
    end = max((offsets[1] for _, offsets in tensors.values()), default=0)
    if 8 + header_len + end > size:
        raise ModelLoadError(
            f"{_named(what, path)} is damaged or truncated: the file is {size:,} bytes but its tensors need "
            f"{8 + header_len + end:,}{again}"
        )
    return {k: shape for k, (shape, _) in tensors.items()}


def _tensor_entries(header: object) -> dict[str, tuple[tuple[int, ...], tuple[int, int]]] | None:
    """(shape, data offsets) per tensor of a parsed header, or None when it is not the layout
    safetensors writes."""
    if not isinstance(header, dict):
        return None
    entries: dict[str, tuple[tuple[int, ...], tuple[int, int]]] = {}
    for key, value in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(value, dict):
            return None
        shape, offsets = value.get("shape"), value.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(n, int) for n in shape)):
            return None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)):
            return None
        entries[key] = (tuple(shape), (offsets[0], offsets[1]))
    return entries
