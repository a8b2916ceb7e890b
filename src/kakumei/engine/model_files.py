"""The models folder (<data dir>/models): what is in it, adding to it, removing from it.

It holds diffusers folders and single files, with LoRAs in lora/ and embeddings in
embeddings/; A1111's and ComfyUI's folder names are read as they are. The engine modules
that know each kind are imported inside the functions: they pull in torch, which listing
LoRA names for an API answer or building the CLI's parser should not pay for.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kakumei.config import Settings
from kakumei.errors import KakumeiError, ModelLoadError, ModelNotFound


def lora_files(models_dir: Path) -> dict[str, Path]:
    """LoRA name -> file, by the rules a prompt's `<lora:name:weight>` is resolved with."""
    from kakumei.engine.lora import LORA_DIRS, LORA_SUFFIXES, find_files

    return find_files(models_dir, LORA_DIRS, LORA_SUFFIXES)


def embedding_files(models_dir: Path) -> dict[str, Path]:
    """Embedding name -> file, by the rules a prompt's embedding names are resolved with."""
    from kakumei.engine.embeddings import EMBEDDING_DIRS, EMBEDDING_SUFFIXES
    from kakumei.engine.lora import find_files

    return find_files(models_dir, EMBEDDING_DIRS, EMBEDDING_SUFFIXES)


@dataclass
class ModelEntry:
    name: str
    kind: str  # "checkpoint" | "diffusers" | "lora" | "embedding"
    architecture: str
    path: Path
    size: int
    sha256: str


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _folder_architecture(folder: Path) -> str:
    try:
        index = json.loads((folder / "model_index.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown"
    cls = str(index.get("_class_name", ""))
    if "XL" in cls:
        arch = "sdxl-refiner" if index.get("text_encoder", [None])[0] is None else "sdxl"
    else:
        arch = "sd2" if unet.get("cross_attention_dim") == 1024 else "sd1"
    return arch + ("-inpaint" if unet.get("in_channels") == 9 else "")


def _file_architecture(path: Path) -> str:
    from kakumei.engine.single_file import detect_architecture

    if path.suffix.lower() != ".safetensors":
        return "unknown (pickle)"
    from kakumei.engine.checkpoints import safetensors_keys

    try:
        return detect_architecture(safetensors_keys(path, path.name), path.name)
    except ModelLoadError:
        return "damaged"


def list_models(settings: Settings, with_hashes: bool = True) -> list[ModelEntry]:
    from kakumei.engine.models import CHECKPOINT_DIRS, HashCache, model_roots
    from kakumei.engine.single_file import SINGLE_FILE_SUFFIXES

    root = settings.models_dir
    hashes = HashCache(settings.home / "cache" / "hashes.json")
    entries: list[ModelEntry] = []

    def sha(path: Path) -> str:
        if not with_hashes:
            return ""
        return hashes.folder_sha256(path) if path.is_dir() else hashes.file_sha256(path)

    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and (child / "model_index.json").is_file():
                entries.append(ModelEntry(child.name, "diffusers", _folder_architecture(child), child, _size(child), sha(child)))
        for base, sub in ((b, s) for b in model_roots(root) for s in ("", *CHECKPOINT_DIRS)):
            folder = base / sub if sub else base
            if folder.is_dir():
                for f in sorted(folder.iterdir()):
                    if f.is_file() and f.suffix.lower() in SINGLE_FILE_SUFFIXES:
                        entries.append(ModelEntry(f.stem, "checkpoint", _file_architecture(f), f, f.stat().st_size, sha(f)))
        for name, f in lora_files(root).items():
            entries.append(ModelEntry(name, "lora", "", f, f.stat().st_size, sha(f)))
        for name, f in embedding_files(root).items():
            entries.append(ModelEntry(name, "embedding", "", f, f.stat().st_size, sha(f)))
    return entries


def _kind_of_file(path: Path) -> str:
    """"checkpoint", "lora" or "embedding", from the tensor names."""
    from kakumei.engine.checkpoints import safetensors_keys

    if path.suffix.lower() != ".safetensors":
        return "checkpoint" if path.suffix.lower() == ".ckpt" else "embedding"
    keys = safetensors_keys(path, path.name)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "checkpoint"
    if any(k.startswith(("lora_", "unet.", "text_encoder.")) for k in keys):
        return "lora"
    return "embedding"


def import_path(source: Path, settings: Settings, link: bool) -> list[Path]:
    """Copy (or link) a checkpoint, LoRA, embedding, diffusers folder, or a whole A1111 /
    ComfyUI models folder into the models folder. Returns what was added."""
    root = settings.models_dir
    root.mkdir(parents=True, exist_ok=True)
    source = source.expanduser().resolve()
    if not source.exists():
        raise ModelNotFound(f"{source} does not exist")
    added: list[Path] = []

    def place(src: Path, dest: Path) -> None:
        if dest.exists() or dest.is_symlink():
            raise KakumeiError(f"{dest} already exists; remove it first (kakumei models remove {dest.stem})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if link:
            os.symlink(src, dest, target_is_directory=src.is_dir())
        elif src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
        added.append(dest)

    if source.is_dir():
        if (source / "model_index.json").is_file():
            place(source, root / source.name)
            return added
        # An A1111 (models/Stable-diffusion, models/Lora, embeddings) or ComfyUI
        # (models/checkpoints, models/loras, models/embeddings) folder: link its parts in place.
        layout = {"Stable-diffusion": "Stable-diffusion", "checkpoints": "checkpoints", "Lora": "Lora", "loras": "loras",
                  "LyCORIS": "LyCORIS", "embeddings": "embeddings"}
        for sub, dest in layout.items():
            for candidate in (source / sub, source / "models" / sub, source.parent / sub if sub == "embeddings" else None):
                if candidate is not None and candidate.is_dir():
                    target = root / "linked" / source.name / dest
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.symlink(candidate, target, target_is_directory=True)
                        added.append(target)
                    break
        if not added:
            raise ModelNotFound(
                f"{source} is neither a diffusers model folder nor an A1111/ComfyUI models folder "
                "(no Stable-diffusion, checkpoints, Lora, loras or embeddings folder in it)"
            )
        return added
    kind = _kind_of_file(source)
    sub = {"checkpoint": "checkpoints", "lora": "lora", "embedding": "embeddings"}[kind]
    place(source, root / sub / source.name)
    return added


def remove_model(name: str, settings: Settings) -> Path:
    matches = [e for e in list_models(settings, with_hashes=False) if e.name == name]
    if not matches:
        known = ", ".join(sorted({e.name for e in list_models(settings, with_hashes=False)})[:20]) or "none"
        raise ModelNotFound(f"no model named {name!r} in {settings.models_dir}; known: {known}")
    if len(matches) > 1:
        raise KakumeiError(f"{name!r} names {len(matches)} things ({', '.join(e.kind for e in matches)}); remove the file itself")
    path = matches[0].path
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)
    return path
