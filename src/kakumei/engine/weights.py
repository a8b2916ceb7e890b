"""Weights read straight into the dtype and memory layout a run computes in.

diffusers' own loader reads a whole component's state dict in the file's dtype (fp32 for most
published SD 1.5 folders) and converts it afterwards, so that at its peak the process holds
the fp32 copy and the converted one. Here a component's model is built on the meta device
(no memory, no random init) and each tensor is read from the file with plain reads (no mmap,
whose touched pages would count as the process's memory), converted and laid out
channels-last at once, so the peak is the converted weights plus one tensor.

Repeat runs skip the conversion: the first load writes the converted tensors to a cache file
(`<home>/cache/weights/`, keyed by the source file's path, size and mtime and the dtype and
layout), and later loads map that file copy-on-write (`mmap.ACCESS_COPY`) and view its bytes as
the tensors, in place: no read, no conversion, no allocation; pages come in as the first step
touches them, and a LoRA merged into a weight copies just that page, never the file. The
cache keeps at most `weight_cache_bytes`, least recently used files going first.

Only the layout diffusers writes itself (one `diffusion_pytorch_model.safetensors` per
component, keys as the model names them) takes this path; anything else (sharded or pickle
files, variants, legacy key names) returns None and the library's loader runs as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# The components kakumei reads itself: the large convolution-heavy diffusers models, built on
# the meta device, and the text encoders (transformers models, whose constructors compute
# buffers the file lacks, so built on the CPU without initialising).
STREAMED_COMPONENTS = ("unet", "vae")
# The CLIP text encoders of SD 1.x, 2.x and SDXL, from transformers' one-file layout.
STREAMED_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
TEXT_ENCODER_FILE = "model.safetensors"
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")

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
    # One read buffer for all tensors: a fresh one per tensor costs a page fault per 4 KiB of
    # the file (2 s of system time for SD 1.5's UNet), every tensor is copied out of it anyway.
    buffer = torch.empty(max((v["data_offsets"][1] - v["data_offsets"][0] for _, v in entries), default=0), dtype=torch.uint8)
    with path.open("rb", buffering=0) as fh:
        for name, info in entries:
            start, end = info["data_offsets"]
            raw = buffer[: end - start]
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
                tensor = tensor.to(dtype=dtype, memory_format=layout, copy=True)
            else:
                tensor = tensor.clone()
            tensors[name] = tensor
    return tensors


_TORCH_TO_SAFETENSORS = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
# Bumped when the cache files' layout changes: older files are then never matched again.
_CACHE_FORMAT = "kakumei-weights-1"


class WeightCache:
    """Converted copies of weight files (see the module's docstring), in `folder`, bounded by
    `max_bytes` (0: no cache)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def path_for(self, source: Path, dtype: torch.dtype, channels_last: bool, part: str = "") -> Path:
        """The cache file of `source` (or of one `part` of it: a component of a single file)."""
        stat = source.stat()
        key = f"{_CACHE_FORMAT}\0{source.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{dtype}\0{channels_last}"
        if part:
            key += f"\0{part}"
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    def mapped(self, source: Path, dtype: torch.dtype, channels_last: bool, part: str = "") -> dict[str, torch.Tensor] | None:
        """The cached tensors of `source` (or `part`), mapped, or None where the cache lacks them."""
        if self.max_bytes <= 0:
            return None
        cached = self.path_for(source, dtype, channels_last, part)
        if not cached.is_file():
            return None
        try:
            tensors = map_tensors(cached)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.debug("weight cache file %s unreadable (%s); converting again", cached.name, exc)
            return None
        try:
            os.utime(cached)  # least recently used goes first
        except OSError:
            pass
        return tensors

    def store(
        self, source: Path, dtype: torch.dtype, channels_last: bool, tensors: dict[str, torch.Tensor], part: str = ""
    ) -> dict[str, torch.Tensor]:
        """Keep `tensors` (converted from `source`, or its `part`) in the cache; returns them
        mapped from the file just written (its pages are in the page cache now, and mapped
        they are counted as they are touched and can be given back once packed), or as they
        are where the cache cannot take them."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.max_bytes <= 0 or size > self.max_bytes:
            return tensors
        cached = self.path_for(source, dtype, channels_last, part)
        try:
            self._make_room(size)
            write_tensors(cached, tensors, channels_last)
            return map_tensors(cached)
        except (OSError, ValueError) as exc:  # a full or read-only disk: the run goes on without it
            log.info("could not write the weight cache (%s)", exc)
            return tensors

    def load(self, source: Path, dtype: torch.dtype, channels_last: bool) -> dict[str, torch.Tensor]:
        """The tensors of `source` as read_tensors gives them, from the cache where it has them."""
        tensors = self.mapped(source, dtype, channels_last)
        if tensors is None:
            tensors = self.store(source, dtype, channels_last, read_tensors(source, dtype, channels_last))
        return tensors

    def _make_room(self, size: int) -> None:
        try:
            files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        total = sum(p.stat().st_size for p in files) + size
        for old in files:
            if total <= self.max_bytes:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], channels_last: bool) -> None:
    """A .safetensors file of `tensors`; with `channels_last` every 4-D tensor is stored as its
    NHWC bytes with the NHWC shape (metadata "layout": "channels_last" says so).
    Written to a temporary name and renamed, so a reader never sees half a file."""
    # widest elements first: every tensor's offset stays aligned to its element size
    names = sorted(tensors, key=lambda n: -tensors[n].element_size())
    layout = "channels_last" if channels_last else "contiguous"
    header: dict[str, Any] = {"__metadata__": {"format": _CACHE_FORMAT, "layout": layout}}
    stored = {}
    offset = 0
    for name in names:
        tensor = tensors[name]
        if channels_last and tensor.dim() == 4:
            tensor = tensor.permute(0, 2, 3, 1)  # a view where the tensor is channels-last
        tensor = tensor.contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _TORCH_TO_SAFETENSORS[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}
        stored[name] = tensor
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 64)  # data starts 64-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little"))
            fh.write(raw)
            for name in names:
                tensor = stored[name]
                if tensor.numel():
                    fh.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The weight cache's live mappings: (first address, length, the mapping). A weak reference,
# so that an entry dies with its mapping and an address range reused for ordinary memory is
# never taken for one.
_MAPPINGS: list[tuple[int, int, weakref.ref[mmap.mmap]]] = []
_MAPPINGS_LOCK = threading.Lock()


def _mapping_of(start: int, end: int) -> tuple[int, mmap.mmap] | None:
    with _MAPPINGS_LOCK:
        _MAPPINGS[:] = [m for m in _MAPPINGS if m[2]() is not None]
        for first, length, ref in _MAPPINGS:
            mapped = ref()
            if mapped is not None and first <= start and end <= first + length:
                return first, mapped
    return None


def is_mapped(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a view of a live weight cache mapping (map_tensors)."""
    start = tensor.data_ptr()
    return tensor.device.type == "cpu" and _mapping_of(start, start + tensor.numel() * tensor.element_size()) is not None


def release_mapped_pages(tensor: torch.Tensor) -> int:
    """Hand the pages of `tensor` back to the kernel where it is a view of a weight cache
    mapping (map_tensors); returns the bytes released. Only for a tensor never written since
    it was mapped (`_version` 0; each mapped tensor has its own counter): its private pages then
    equal the file's, and reading the tensor again reads them from the file. A written page
    is the only copy of what was written, so a written tensor is left alone."""
    if tensor._version != 0 or tensor.device.type != "cpu":
        return 0
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    found = _mapping_of(start, end)
    if found is None:
        return 0
    first, mapped = found
    page = mmap.PAGESIZE
    # only whole pages of this tensor: a page it shares with a neighbour stays
    lo = -(-(start - first) // page) * page
    hi = (end - first) // page * page
    if hi <= lo:
        return 0
    mapped.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return hi - lo


def map_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a file write_tensors wrote, as views of a copy-on-write mapping of it."""
    header, base = safetensors_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != _CACHE_FORMAT:
        raise ValueError(f"{path.name} is not a kakumei weight cache file")
    channels_last = meta.get("layout") == "channels_last"
    with path.open("rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    if len(mapped) < base + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0):
        raise ValueError(f"{path.name} is truncated")
    first = torch.frombuffer(mapped, dtype=torch.uint8, count=1).data_ptr() if len(mapped) else 0
    with _MAPPINGS_LOCK:
        _MAPPINGS.append((first, len(mapped), weakref.ref(mapped)))
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        if end == start:
            tensors[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        # One buffer view per tensor (each keeps the mapping alive): each tensor then has a
        # version counter of its own, so a write to one (a LoRA merge) leaves the others
        # known unwritten (release_mapped_pages).
        tensor = torch.frombuffer(mapped, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        tensor = tensor.reshape(info["shape"])
        if channels_last and tensor.dim() == 4:
            tensor = tensor.permute(0, 3, 1, 2)  # NHWC bytes seen as an NCHW tensor, channels-last
        tensors[name] = tensor
    return tensors


def build_component(cls: Any, config_dir: Path, tensors: dict[str, torch.Tensor]) -> Any | None:
    """A diffusers model (e.g. UNet2DConditionModel) of the config in `config_dir`, built on
    the meta device and given `tensors` (every one of its weights, strict), or None where it
    does not fit them or keeps a buffer they lack."""
    from diffusers.models.modeling_utils import no_init_weights

    try:
        config = cls.load_config(config_dir)
        # every parameter comes from the tensors: initialising them, even on the meta device,
        # only costs time (a tenth of a second or two for SD 1.5's UNet and VAE)
        with torch.device("meta"), no_init_weights():
            model = cls.from_config(config)
        model.load_state_dict(tensors, strict=True, assign=True)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        log.debug("%s: streamed load refused (%s); the library's loader reads it", config_dir.name, exc)
        return None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None  # a buffer the file does not hold: only the library knows how to build it
    model.register_to_config(_name_or_path=str(config_dir))
    return model.eval()


def build_text_encoder(cls: Any, config_dir: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> Any | None:
    """A transformers text encoder (e.g. CLIPTextModel) of the config in `config_dir`, given
    `tensors` in `dtype`, or None where they do not fit. Built on the CPU without
    initialising (allocated, never touched: no memory), so that the buffers its constructor
    computes (position ids) are real."""
    from transformers.initialization import no_init_weights as no_transformers_init

    try:
        config = cls.config_class.from_pretrained(config_dir, local_files_only=True)
        with no_transformers_init():
            model = cls(config)
        model.load_state_dict(tensors, strict=True, assign=True)
    except (RuntimeError, ValueError, KeyError, OSError, TypeError) as exc:
        log.debug("%s: streamed load refused (%s); transformers' loader reads it", config_dir.name, exc)
        return None
    floating = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if any(t.dtype != dtype for t in floating):
        return None  # a float buffer the file does not hold stayed in the constructor's dtype
    model.config.dtype = dtype
    model.config._name_or_path = str(config_dir)
    return model.eval()


def _component_tensors(
    sub: Path, filename: str, dtype: torch.dtype, channels_last: bool, cache: WeightCache | None
) -> dict[str, torch.Tensor] | None:
    """The tensors of one component folder's weights file (through `cache` where given), or
    None where the folder lacks it or its config, or the file does not read."""
    weights = sub / filename
    if not weights.is_file() or not (sub / "config.json").is_file():
        return None
    try:
        return cache.load(weights, dtype, channels_last) if cache is not None else read_tensors(weights, dtype, channels_last)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        log.debug("%s: streamed load refused (%s); the library's loader reads it", sub.name, exc)
        return None


def load_component(
    folder: Path, name: str, cls: Any, dtype: torch.dtype, channels_last: bool, cache: WeightCache | None = None
) -> Any | None:
    """One diffusers model of a pipeline folder (e.g. "unet", UNet2DConditionModel) in
    `dtype`, or None where the library's loader has to do it."""
    tensors = _component_tensors(folder / name, WEIGHTS_FILE, dtype, channels_last, cache)
    return None if tensors is None else build_component(cls, folder / name, tensors)


def load_text_encoder(folder: Path, name: str, cls: Any, dtype: torch.dtype, cache: WeightCache | None = None) -> Any | None:
    """A transformers text encoder of a pipeline folder (e.g. "text_encoder", CLIPTextModel)
    in `dtype` from one `model.safetensors`, or None where transformers' loader has to do it."""
    tensors = _component_tensors(folder / name, TEXT_ENCODER_FILE, dtype, False, cache)
    return None if tensors is None else build_text_encoder(cls, folder / name, tensors, dtype)


def streamed_components(
    folder: Path, dtype: torch.dtype, channels_last: bool, cache: WeightCache | None = None
) -> dict[str, Any]:
    """The components of a diffusers folder that this module can read, by name, for
    DiffusionPipeline.from_pretrained(folder, **components)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    import diffusers

    loaded = {}
    for name in (*STREAMED_COMPONENTS, *STREAMED_TEXT_ENCODERS):
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in ("diffusers", "transformers")):
            continue
        if entry[0] == "diffusers" and name in STREAMED_COMPONENTS:
            cls = getattr(diffusers, str(entry[1]), None)
            model = None if cls is None else load_component(folder, name, cls, dtype, channels_last, cache)
        elif entry[0] == "transformers" and str(entry[1]) in TEXT_ENCODER_CLASSES:
            import transformers

            cls = getattr(transformers, str(entry[1]))
            model = load_text_encoder(folder, name, cls, dtype, cache)
        else:
            model = None
        if model is not None:
            loaded[name] = model
    return loaded
