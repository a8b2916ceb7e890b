"""Weights read straight into the dtype and memory layout a run computes in.

diffusers' own loader reads a whole component's state dict in the file's dtype (fp32 for most
published SD 1.5 folders) and converts it afterwards, so that at its peak the process holds
the fp32 copy and the converted one. Here a component's model is built on the meta device
(no memory, no random init) and each tensor is read from the file with plain reads (no mmap,
whose touched pages would count as the process's memory), converted and laid out
channels-last at once, so the peak is the converted weights plus one tensor.

Only the layout diffusers writes itself (one `diffusion_pytorch_model.safetensors` per
component, keys as the model names them) takes this path; anything else (sharded or pickle
files, variants, legacy key names) returns None and the library's loader runs as before.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# The components kakumei reads itself: the large convolution-heavy diffusers models. Text
# encoders (transformers models, with non-persistent buffers built at init) load through
# transformers, which converts as it reads.
STREAMED_COMPONENTS = ("unet", "vae")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a .safetensors file and the offset where its data starts."""
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size < 100 << 20:
            raise ValueError(f"{path.name} is not a safetensors file")
        header = json.loads(fh.read(size))
    return header, 8 + size


def parameter_count(path: Path) -> int:
    """Elements in a .safetensors file, from its header alone."""
    header, _ = safetensors_header(path)
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def folder_unet_parameters(folder: Path) -> int | None:
    """The UNet's parameter count of a diffusers folder without reading its weights, or None
    where the folder does not have the one-file layout."""
    weights = folder / "unet" / WEIGHTS_FILE
    try:
        return parameter_count(weights) if weights.is_file() else None
    except (OSError, ValueError):
        return None


def read_tensors(path: Path, dtype: torch.dtype, channels_last: bool) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file, floating-point ones converted to `dtype` and 4-D
    ones laid out channels-last, reading one tensor at a time."""
    header, base = safetensors_header(path)
    entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
    tensors: dict[str, torch.Tensor] = {}
    with path.open("rb", buffering=0) as fh:
        for name, info in entries:
            start, end = info["data_offsets"]
            raw = torch.empty(end - start, dtype=torch.uint8)
            fh.seek(base + start)
            view = memoryview(raw.numpy())
            done = 0
            while done < len(view):
                got = fh.readinto(view[done:])
                if not got:
                    raise ValueError(f"{path.name} ends inside tensor {name}")
                done += got
            tensor = raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
            if tensor.is_floating_point():
                layout = torch.channels_last if channels_last and tensor.dim() == 4 else torch.contiguous_format
                # one copy: the file's bytes become the run's dtype and layout together
                tensor = tensor.to(dtype=dtype, memory_format=layout)
            tensors[name] = tensor
    return tensors


def load_component(folder: Path, name: str, cls: Any, dtype: torch.dtype, channels_last: bool) -> Any | None:
    """One diffusers model of a pipeline folder (e.g. "unet", UNet2DConditionModel) in
    `dtype`, or None where the library's loader has to do it."""
    sub = folder / name
    weights = sub / WEIGHTS_FILE
    if not weights.is_file() or not (sub / "config.json").is_file():
        return None
    try:
        config = cls.load_config(sub)
        with torch.device("meta"):
            model = cls.from_config(config)
        model.load_state_dict(read_tensors(weights, dtype, channels_last), strict=True, assign=True)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        log.debug("%s: streamed load refused (%s); the library's loader reads it", name, exc)
        return None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None  # a buffer the file does not hold: only the library knows how to build it
    model.register_to_config(_name_or_path=str(sub))
    return model.eval()


def streamed_components(folder: Path, dtype: torch.dtype, channels_last: bool) -> dict[str, Any]:
    """The components of a diffusers folder that this module can read, by name, for
    DiffusionPipeline.from_pretrained(folder, **components)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    import diffusers

    loaded = {}
    for name in STREAMED_COMPONENTS:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers"):
            continue
        cls = getattr(diffusers, str(entry[1]), None)
        if cls is None:
            continue
        model = load_component(folder, name, cls, dtype, channels_last)
        if model is not None:
            loaded[name] = model
    return loaded
