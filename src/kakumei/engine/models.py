"""Resolve a model reference (hub id, local diffusers folder, `kakumei:tiny`) and load it,
with a small LRU cache of loaded pipelines and cached file hashes.

A reference is resolved in this order: `kakumei:tiny`; an existing path; something that looks
like a path but does not exist (an error); a Hugging Face hub id `owner/name`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kakumei.engine.speed import apply_fast_path, compile_unet, wants_channels_last, wants_cpu_bf16
from kakumei.engine.tiny import TINY_NAME, TINY_REF, ensure_tiny_model
from kakumei.engine.single_file import SINGLE_FILE_SUFFIXES, load_single_file
from kakumei.errors import InvalidRequest, KakumeiError, ModelLoadError, ModelNotFound

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference points."""

    ref: str  # as the user wrote it
    kind: str  # "tiny" | "folder" | "file" | "hub"
    location: str  # folder path or hub id
    name: str  # A1111's "Model:" field


@dataclass
class LoadedModel:
    source: ModelSource
    pipe: Any  # a diffusers pipeline
    sha256: str
    device: torch.device
    dtype: torch.dtype
    base_scheduler_config: dict[str, Any]
    architecture: str = "sd1"  # see architecture_of
    _variants: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def family(self) -> str:
        """"sd1", "sd2" or "sdxl": what LoRAs and embeddings must be made for."""
        return self.architecture.split("-")[0]

    def variant(self, mode: str) -> Any:
        """The pipeline for "txt2img", "img2img" or "inpaint", sharing this model's weights
        (diffusers' from_pipe builds it without copying anything)."""
        if mode == "txt2img" and not self.architecture.endswith(("-refiner", "-inpaint")):
            return self.pipe
        if mode not in self._variants:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForInpainting if mode == "inpaint" else AutoPipelineForImage2Image
            try:
                pipe = auto.from_pipe(self.pipe)
            except (ValueError, TypeError) as exc:
                raise InvalidRequest(f"model {self.source.name!r} ({self.architecture}) cannot do {mode}: {exc}") from None
            pipe.set_progress_bar_config(disable=True)
            self._variants[mode] = pipe
        return self._variants[mode]

    @property
    def short_hash(self) -> str:
        """A1111's "Model hash": the first 10 hex digits of the sha256."""
        return self.sha256[:10]


def architecture_of(pipe: Any) -> str:
    """"sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner", with "-inpaint" for 9-channel UNets.

    Read from the loaded components, so it holds for folders, hub ids and single files alike.
    """
    unet_config = pipe.unet.config
    if hasattr(pipe, "text_encoder_2"):
        base = "sdxl-refiner" if getattr(pipe, "text_encoder", None) is None else "sdxl"
    else:
        # SD 2 uses OpenCLIP, whose tokenizer pads with "!" where CLIP's pads with <|endoftext|>.
        open_clip = getattr(pipe.tokenizer, "pad_token", None) == "!" or unet_config.cross_attention_dim == 1024
        base = "sd2" if open_clip else "sd1"
        if open_clip and pipe.scheduler.config.get("prediction_type") == "v_prediction":
            base = "sd2-v"
    if unet_config.in_channels == 9:
        base += "-inpaint"
    return base


# Where checkpoints live under the models folder: kakumei's own, A1111's and ComfyUI's names.
CHECKPOINT_DIRS = ("checkpoints", "Stable-diffusion")


def model_roots(models_dir: Path) -> list[Path]:
    """The models folder and the A1111/ComfyUI folders linked into it (`models import DIR`)."""
    linked = models_dir / "linked"
    return [models_dir] + (sorted(p for p in linked.iterdir() if p.is_dir()) if linked.is_dir() else [])


def find_checkpoint(name: str, models_dir: Path) -> Path | None:
    """A single-file checkpoint by name (with or without its suffix) in the models folder."""
    for root, sub in ((r, s) for r in model_roots(models_dir) for s in ("", *CHECKPOINT_DIRS)):
        folder = root / sub if sub else root
        for suffix in ("", *SINGLE_FILE_SUFFIXES):
            candidate = folder / (name + suffix)
            if candidate.is_file() and candidate.suffix.lower() in SINGLE_FILE_SUFFIXES:
                return candidate
    return None


# Few-step models and the settings their model cards recommend, matched on the model's name.
# Applied only to fields the request leaves unset (and then recorded like any other value).
FEW_STEP_DEFAULTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("turbo", {"steps": 1, "cfg_scale": 0.0, "sampler_name": "Euler a", "scheduler": "SGM Uniform"}),
    ("lightning", {"steps": 4, "cfg_scale": 0.0, "sampler_name": "Euler", "scheduler": "SGM Uniform"}),
    ("lcm", {"steps": 4, "cfg_scale": 1.0, "sampler_name": "LCM", "scheduler": "Automatic"}),
)


def recommended_defaults(model_name: str) -> dict[str, Any]:
    """Request defaults a model needs to give good images (empty for ordinary models)."""
    lowered = model_name.lower()
    for marker, values in FEW_STEP_DEFAULTS:
        if marker in lowered:
            return dict(values)
    return {}


def resolve_model(ref: str, models_dir: Path) -> ModelSource:
    """Say where `ref` points without loading anything."""
    ref = ref.strip()
    if not ref:
        raise ModelNotFound("no model given; pass --model with a hub id, a diffusers folder or kakumei:tiny")
    if ref == TINY_REF:
        return ModelSource(ref, "tiny", str(models_dir / TINY_NAME), TINY_NAME)
    path = Path(ref).expanduser()
    if not path.exists() and (models_dir / ref).exists():
        path = models_dir / ref
    if path.exists():
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelNotFound(f"{ref!r} is a folder but not a diffusers model (no model_index.json in it)")
            return ModelSource(ref, "folder", str(path.resolve()), path.resolve().name)
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return ModelSource(ref, "file", str(path.resolve()), path.stem)
        raise ModelNotFound(f"{ref!r} is not a model: expected a diffusers folder or a .safetensors file")
    found = find_checkpoint(ref, models_dir)
    if found is not None:
        return ModelSource(ref, "file", str(found.resolve()), found.stem)
    looks_like_path = ref.startswith((".", "/", "~")) or "\\" in ref or Path(ref).suffix.lower() in _WEIGHT_SUFFIXES
    if looks_like_path or not _HUB_ID.match(ref):
        raise ModelNotFound(f"no model at {ref!r}: the path does not exist (and it is not a hub id like owner/name)")
    return ModelSource(ref, "hub", ref, ref.split("/")[-1])


class HashCache:
    """sha256 of files, cached by (path, size, mtime) in the data dir, as A1111 caches them:
    hashing a 4 GB checkpoint takes seconds, and it is needed for every image's metadata."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self._path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def file_sha256(self, file: Path, tensors_only: bool = False) -> str:
        """sha256 of the file, or with `tensors_only` of a .safetensors file's data after its
        header (A1111's "addnet" hash for LoRAs: editing the metadata does not change it)."""
        stat = file.stat()
        key = str(file.resolve()) + ("#tensors" if tensors_only else "")
        with self._lock:
            cache = self._load()
            entry = cache.get(key)
            if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
                return str(entry["sha256"])
            digest = hashlib.sha256()
            with file.open("rb") as fh:
                if tensors_only and file.suffix.lower() == ".safetensors":
                    fh.seek(8 + int.from_bytes(fh.read(8), "little"))
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            cache[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest.hexdigest()}
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=0))
            tmp.replace(self._path)
            return digest.hexdigest()

    def folder_sha256(self, folder: Path) -> str:
        """A diffusers folder has no single checkpoint file: hash the sorted list of
        (relative path, sha256) of its weight and config files instead."""
        digest = hashlib.sha256()
        files = sorted(
            p for p in folder.rglob("*") if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.suffix == ".json")
        )
        for file in files:
            digest.update(f"{file.relative_to(folder).as_posix()}\0{self.file_sha256(file)}\n".encode())
        return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _without_paths(text: str, location: str, models_dir: Path) -> str:
    """A library's message without the absolute paths it names: the server's disk layout is
    nobody's business, and the caller knows the model by the name they gave."""
    places = [(p, "<model>") for p in (location, str(Path(location).resolve()))]
    places += [(p, "<models>") for p in (str(models_dir), str(models_dir.resolve()))]
    for path, shown in sorted(places, key=lambda place: len(place[0]), reverse=True):
        text = text.replace(path, shown)
    return text.replace(str(Path.home()), "~")


def _load_pipeline(location: str, dtype: torch.dtype, local_only: bool, streamed: dict[str, Any] | None = None) -> Any:
    # DiffusionPipeline picks the class model_index.json names (an inpainting or refiner
    # model is not a text-to-image pipeline). Components given in `streamed` (weights.py)
    # are taken as they are; the library loads the rest.
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(
        location,
        dtype=dtype,
        local_files_only=local_only,
        safety_checker=None,
        requires_safety_checker=False,
        **(streamed or {}),
    )


def _load_folder(folder: Path, dtype: torch.dtype, channels_last: bool, weight_cache: Any = None) -> Any:
    """A local diffusers folder, its UNet and VAE read straight into `dtype` and layout
    (from `weight_cache`, a weights.WeightCache, on repeat runs)."""
    from kakumei.engine.weights import streamed_components

    streamed = streamed_components(folder, dtype, channels_last, weight_cache)
    return _load_pipeline(str(folder), dtype, local_only=True, streamed=streamed)


def _unet_parameters(source: ModelSource, location: str, allow_pickle: bool) -> int | None:
    """The UNet's parameter count read from the files' headers, before loading anything;
    None where that is not cheap (hub ids not in the local cache, pickle files)."""
    if source.kind in ("folder", "tiny") or (source.kind == "hub" and Path(location).is_dir()):
        from kakumei.engine.weights import folder_unet_parameters

        return folder_unet_parameters(Path(location))
    if source.kind == "file" and Path(location).suffix.lower() == ".safetensors":
        from kakumei.engine.single_file import checkpoint_shapes

        try:
            shapes = checkpoint_shapes(Path(location), allow_pickle)
        except (KakumeiError, OSError, ValueError):
            return None  # load_single_file says what is wrong with it
        return sum(math.prod(s) for k, s in shapes.items() if k.startswith("model.diffusion_model."))
    return None


def load_model(
    source: ModelSource,
    models_dir: Path,
    hashes: HashCache,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool,
    low_memory: bool = False,
    allow_pickle: bool = False,
    auto_dtype: bool = False,
    compile_model: bool = False,
    weight_cache_bytes: int = 0,
) -> LoadedModel:
    """Load a resolved model onto `device`. Errors are ModelNotFound/ModelLoadError with a
    sentence saying what to do. `weight_cache_bytes` bounds the converted copies of local
    folders' UNet and VAE kept in `<home>/cache/weights` (weights.WeightCache; 0: none)."""
    location = source.location
    if source.kind == "tiny":
        location = str(ensure_tiny_model(models_dir))
    auto = auto_dtype and not low_memory
    # Decided before loading, from the files' headers, so that the weights are read once
    # into the dtype and layout the run computes in (no fp32 copy beside the bf16 one).
    # A hub model in the local cache is a diffusers folder there (its snapshot): loaded as one,
    # it takes the weight cache and the CPU fast path like any folder.
    snapshot = hub_snapshot(location) if source.kind == "hub" else None
    if snapshot is not None:
        location = str(snapshot)
    if wants_cpu_bf16(device, dtype, auto, _unet_parameters(source, location, allow_pickle)):
        dtype = torch.bfloat16
    layout = wants_channels_last(device)
    try:
        if source.kind == "hub" and snapshot is None:
            pipe = _load_hub(source, dtype, offline)
            sha = _hub_sha256(source.location, hashes)
        elif source.kind == "file":
            # The first run hashes the file while the weights load (hashlib and file reads
            # release the GIL); later runs find the hash in the cache by (path, size, mtime).
            with ThreadPoolExecutor(1) as pool:
                hashing = pool.submit(hashes.file_sha256, Path(location))
                from kakumei.engine.weights import WeightCache

                cache = WeightCache(models_dir.parent / "cache" / "weights", weight_cache_bytes)
                pipe, _ = load_single_file(Path(location), models_dir.parent / "cache", dtype, allow_pickle, cache, layout)
                sha = hashing.result()
        else:
            with ThreadPoolExecutor(1) as pool:
                hashing = pool.submit(hashes.folder_sha256, Path(location))
                from kakumei.engine.weights import WeightCache

                cache = WeightCache(models_dir.parent / "cache" / "weights", weight_cache_bytes)
                try:
                    pipe = _load_folder(Path(location), dtype, layout, cache)
                except Exception:
                    if snapshot is None:
                        raise
                    # a snapshot with files missing: the hub loader fetches them where it may
                    pipe = _load_hub(source, dtype, offline)
                sha = hashing.result()
    except KakumeiError:
        raise
    except Exception as exc:  # diffusers/safetensors/torch raise many types for bad files
        raise ModelLoadError(
            f"could not load model {source.ref!r}: {_without_paths(_first_line(exc), location, models_dir)} "
            "(the files may be corrupt or truncated; re-download or re-import the model)"
        ) from exc
    base_config = dict(pipe.scheduler.config)
    if low_memory:
        pipe.enable_attention_slicing()
        if hasattr(pipe, "enable_vae_tiling"):
            pipe.enable_vae_tiling()
        if device.type == "cuda":
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(device)
    else:
        pipe.to(device)
    dtype = apply_fast_path(pipe, device, dtype, auto)
    if compile_model:
        compile_unet(pipe, device)
    elif not low_memory and isinstance(getattr(pipe, "unet", None), torch.nn.Module):
        from kakumei.engine.packing import pack_unet, wants_packing

        if wants_packing(device, pipe.unet.dtype):
            pack_unet(pipe.unet)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(source, pipe, sha, device, dtype, base_config, architecture_of(pipe))


def missing_model_message(ref: str, why: str) -> str:
    """Two lines for a hub model that is not on this machine: what is missing and what to do."""
    return (
        f"model {ref!r} is not downloaded and {why}.\n"
        f"Get it with `kakumei models pull {ref}`, use a model on disk with --model PATH, "
        "or try kakumei without a download: --model kakumei:tiny"
    )


def hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's folder of a hub model (its snapshot holding the
    pipeline index), or None where the model is not there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo_id, "model_index.json")
    return Path(index).parent if isinstance(index, str) else None


def hub_model_cached(repo_id: str) -> bool:
    """Whether a hub model's pipeline index is in the local Hugging Face cache (no network)."""
    return hub_snapshot(repo_id) is not None


def missing_model(source: ModelSource, offline: bool) -> str | None:
    """Why `source` is not on this machine (a hub model not in the cache), or None when it is.
    resolve_model has already refused paths that do not exist."""
    if source.kind != "hub" or hub_model_cached(source.location):
        return None
    if offline:
        return missing_model_message(source.ref, "kakumei is offline (HF_HUB_OFFLINE)")
    return (
        f"model {source.ref!r} is not downloaded yet; the first job that uses it downloads it, "
        f"or run `kakumei models pull {source.ref}` now"
    )


def _load_hub(source: ModelSource, dtype: torch.dtype, offline: bool) -> Any:
    # The local cache first: works offline and avoids a network round trip when cached.
    try:
        return _load_pipeline(source.location, dtype, local_only=True)
    except (OSError, ValueError) as cached_exc:
        if offline:
            raise ModelNotFound(missing_model_message(source.ref, "kakumei is offline (HF_HUB_OFFLINE)")) from cached_exc
    try:
        return _load_pipeline(source.location, dtype, local_only=False)
    except OSError as exc:
        if _caused_by(exc, "RepositoryNotFoundError"):
            raise ModelNotFound(f"there is no model {source.ref!r} on the Hugging Face hub; check the id") from exc
        # diffusers' own text points at a "stacktrace above" that is never shown
        raise ModelNotFound(missing_model_message(source.ref, "the Hugging Face hub could not be reached")) from exc


def _caused_by(exc: BaseException, class_name: str) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == class_name:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _hub_sha256(repo_id: str, hashes: HashCache) -> str:
    from huggingface_hub import snapshot_download

    # The model was just loaded, so its snapshot is in the cache.
    return hashes.folder_sha256(Path(snapshot_download(repo_id, local_files_only=True)))


def pipeline_bytes(pipe: Any) -> int:
    """Bytes of a pipeline's weights (parameters and buffers of its torch modules)."""
    total = 0
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total


def memory_budget(device: torch.device) -> int:
    """Bytes the model cache may hold: 60% of the GPU's memory, or half of the machine's
    RAM on a CPU; the rest is for activations, the VAE decode and everything else."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1] * 0.6)
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class ModelCache:
    """An LRU of loaded pipelines, keyed by (reference, device, dtype), bounded both by a
    count and by the bytes of their weights (`budget_bytes`, None = count only)."""

    def __init__(self, capacity: int = 1, budget_bytes: int | None = None) -> None:
        self._capacity = max(1, capacity)
        self._budget = budget_bytes
        self._items: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self._bytes: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def _evict_oldest(self) -> None:
        key, evicted = self._items.popitem(last=False)
        self._bytes.pop(key, None)
        del evicted
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _over_budget(self, extra: int = 0) -> bool:
        return self._budget is not None and sum(self._bytes.values()) + extra > self._budget

    def get(self, key: tuple[str, str, str], load: Callable[[], LoadedModel]) -> LoadedModel:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            # Make room first: two full-size models side by side may not fit. The newcomer's
            # size is unknown until loaded; the largest loaded model stands in for it.
            guess = max(self._bytes.values(), default=0)
            while self._items and (len(self._items) >= self._capacity or self._over_budget(guess)):
                self._evict_oldest()
            model = load()
            self._items[key] = model
            self._bytes[key] = pipeline_bytes(model.pipe)
            while len(self._items) > 1 and self._over_budget():
                self._evict_oldest()
            return model

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._items.values())
