"""LoRA files (kohya / AUTOMATIC1111 `.safetensors`, and diffusers/PEFT ones) applied by
merging their low-rank deltas into the model's weights for the length of one request.

Merging, as A1111 does, keeps generation as fast as without LoRA and needs no extra library;
the touched weights are copied first and restored exactly afterwards.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kakumei.engine.checkpoints import read_state_dict
from kakumei.engine.models import HashCache, LoadedModel
from kakumei.engine.prompts import LoraTag
from kakumei.errors import InvalidRequest, ModelLoadError

log = logging.getLogger(__name__)

# Where LoRAs live under the models folder: kakumei's own name and A1111's / ComfyUI's.
LORA_DIRS = ("lora", "Lora", "loras", "LyCORIS")
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")


@dataclass(frozen=True)
class LoraFile:
    name: str
    path: Path
    sha256: str  # of the whole file
    addnet_hash: str  # of the tensor data only: what A1111 prints in "Lora hashes"
    te_weight: float
    unet_weight: float

    @property
    def short_hash(self) -> str:
        return self.addnet_hash[:12]

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "addnet_hash": self.addnet_hash,
            "te_weight": self.te_weight,
            "unet_weight": self.unet_weight,
        }


def find_files(models_dir: Path, subdirs: tuple[str, ...], suffixes: tuple[str, ...]) -> dict[str, Path]:
    """name (file stem) -> path, for files in any of the subfolders (searched recursively)."""
    from kakumei.engine.models import model_roots

    found: dict[str, Path] = {}
    for root in (base / sub for base in model_roots(models_dir) for sub in subdirs):
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.suffix.lower() in suffixes and path.is_file():
                    found.setdefault(path.stem, path)
    return found


class LoraLibrary:
    """The LoRA files under a models folder, by name, with cached hashes."""

    def __init__(self, models_dir: Path, hashes: HashCache, allow_pickle: bool) -> None:
        self._models_dir = models_dir
        self._hashes = hashes
        self._allow_pickle = allow_pickle

    def names(self) -> dict[str, Path]:
        return find_files(self._models_dir, LORA_DIRS, LORA_SUFFIXES)

    def resolve(self, tags: list[LoraTag], family: str) -> list[LoraFile]:
        if not tags:
            return []
        known = self.names()
        files = []
        for tag in tags:
            path = known.get(tag.name)
            if path is None:
                shown = ", ".join(sorted(known)[:20]) or "none"
                # Named as the prompt names it; the models folder's place on disk is the server's own.
                raise InvalidRequest(f"unknown LoRA {tag.name!r} in the prompt; LoRAs on this machine: {shown}")
            files.append(
                LoraFile(
                    tag.name,
                    path,
                    self._hashes.file_sha256(path),
                    self._hashes.file_sha256(path, tensors_only=True),
                    tag.te_weight,
                    tag.unet_weight,
                )
            )
        return files

    def load(self, lora: LoraFile) -> dict[str, torch.Tensor]:
        return read_state_dict(lora.path, self._allow_pickle, what=f"LoRA {lora.name!r}")


# --- key names ----------------------------------------------------------------------------

_RESNET_PARTS = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj", "skip_connection": "conv_shortcut"}


def _resnet(rest: str) -> str:
    for old, new in _RESNET_PARTS.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def sgm_to_diffusers(name: str) -> str:
    """kohya's SDXL LoRAs name UNet layers as the original (SGM) code does:
    `input_blocks_4_1_...` -> `down_blocks_1_attentions_0_...` (2 layers per block, as in SD)."""
    if m := re.match(r"input_blocks_(\d+)_(\d+)_(.+)", name):
        k, sub, rest = int(m[1]), int(m[2]), m[3]
        if k == 0:
            return "conv_in"
        i, j = (k - 1) // 3, (k - 1) % 3
        if j == 2:
            return f"down_blocks_{i}_downsamplers_0_conv"
        return f"down_blocks_{i}_resnets_{j}_{_resnet(rest)}" if sub == 0 else f"down_blocks_{i}_attentions_{j}_{rest}"
    if m := re.match(r"middle_block_(\d)_(.+)", name):
        part = {"0": "resnets_0", "1": "attentions_0", "2": "resnets_1"}[m[1]]
        rest = _resnet(m[2]) if m[1] != "1" else m[2]
        return f"mid_block_{part}_{rest}"
    if m := re.match(r"output_blocks_(\d+)_(\d+)_(.+)", name):
        k, sub, rest = int(m[1]), int(m[2]), m[3]
        i, j = k // 3, k % 3
        if sub == 0:
            return f"up_blocks_{i}_resnets_{j}_{_resnet(rest)}"
        if sub == 2 or rest.startswith("conv"):
            return f"up_blocks_{i}_upsamplers_0_conv"
        return f"up_blocks_{i}_attentions_{j}_{rest}"
    return name


def _normalise(state: dict[str, torch.Tensor], sdxl: bool) -> dict[str, dict[str, torch.Tensor]]:
    """Group a LoRA's tensors by layer: {kohya-style layer name: {"down", "up", "alpha"}}."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    unsupported = set()
    for key, tensor in state.items():
        if key.startswith(("unet.", "text_encoder.", "text_encoder_2.")) and (".lora_A." in key or ".lora_B." in key):
            comp, _, rest = key.partition(".")
            base, part = re.split(r"\.lora_([AB])\.", rest)[0:2]
            prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}[comp]
            layers.setdefault(prefix + base.replace(".", "_"), {})["down" if part == "A" else "up"] = tensor
            continue
        base, _, part = key.partition(".")
        if part in ("lora_down.weight", "lora_up.weight"):
            layers.setdefault(base, {})[part.split("_")[1].split(".")[0]] = tensor
        elif part == "alpha":
            layers.setdefault(base, {})["alpha"] = tensor
        elif part.startswith(("hada_", "lokr_", "oft_", "diff", "dora_scale", "w_norm", "b_norm", "on_input")):
            unsupported.add(part.split(".")[0])
    if unsupported and not any("down" in v for v in layers.values()):
        raise InvalidRequest(
            f"this LoRA uses LyCORIS layers ({', '.join(sorted(unsupported))}); kakumei applies LoRA/LoCon files"
        )
    return {k: v for k, v in layers.items() if "down" in v and "up" in v}


def lora_family(layers: dict[str, Any]) -> str | None:
    """"sdxl" when the LoRA has SDXL's two text encoders or SGM UNet names, else None (unknown)."""
    if any(k.startswith(("lora_te1_", "lora_te2_")) or k.startswith("lora_unet_input_blocks") for k in layers):
        return "sdxl"
    return None


def _module_index(pipe: Any) -> dict[str, tuple[torch.nn.Module, str]]:
    sdxl = hasattr(pipe, "text_encoder_2")
    parts: list[tuple[str, Any, str]] = [("lora_unet_", pipe.unet, "unet")]
    if getattr(pipe, "text_encoder", None) is not None:
        parts.append(("lora_te1_" if sdxl else "lora_te_", pipe.text_encoder, "te"))
    if sdxl and getattr(pipe, "text_encoder_2", None) is not None:
        parts.append(("lora_te2_", pipe.text_encoder_2, "te"))
    index = {}
    for prefix, component, kind in parts:
        for name, module in component.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                key = name.replace(".", "_")
                # kohya names text-encoder layers as transformers 4 did (text_model.encoder...);
                # transformers 5 dropped the text_model level.
                if kind == "te" and not key.startswith("text_model_"):
                    key = "text_model_" + key
                index[prefix + key] = (module, kind)
    return index


def _delta(layer: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    down, up = layer["down"].float(), layer["up"].float()
    rank = down.shape[0]
    scale = float(layer["alpha"]) / rank if "alpha" in layer else 1.0
    if down.dim() == 2 or (down.dim() == 4 and down.shape[2:] == (1, 1) and up.shape[2:] == (1, 1)):
        delta = up.flatten(1) @ down.flatten(1)
    else:  # LoCon: a k x k down convolution followed by a 1 x 1 up convolution
        delta = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    if delta.numel() != torch.Size(shape).numel():
        raise ValueError(f"shape {tuple(delta.shape)} does not fit {tuple(shape)}")
    return delta.reshape(shape) * scale


def lora_patches(pipe: Any, family: str, lora: LoraFile, state: dict[str, torch.Tensor]) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(weight, delta already scaled by the tag's weight) for each layer the LoRA changes;
    InvalidRequest when it was made for another architecture."""
    sdxl = family == "sdxl"
    layers = _normalise(state, sdxl)
    if not layers:
        raise InvalidRequest(f"LoRA {lora.name!r} holds no LoRA layers kakumei understands")
    made_for = lora_family(layers)
    if made_for == "sdxl" and not sdxl or made_for is None and sdxl and any(k.startswith("lora_te_") for k in layers):
        raise InvalidRequest(
            f"LoRA {lora.name!r} was made for {'SDXL' if made_for else 'SD 1/2'}; the model is {family.upper()}. "
            "Use a LoRA made for this model's architecture"
        )
    index = _module_index(pipe)
    patches = []
    missing = []
    for name, layer in layers.items():
        target = index.get(name)
        if target is None and name.startswith("lora_unet_"):
            target = index.get("lora_unet_" + sgm_to_diffusers(name[len("lora_unet_") :]))
        if target is None:
            missing.append(name)
            continue
        module, kind = target
        weight = module.weight
        try:
            delta = _delta(layer, weight.shape)
        except ValueError as exc:
            raise InvalidRequest(
                f"LoRA {lora.name!r} does not fit this model ({name}: {exc}); it was made for another "
                f"architecture than {family.upper()}"
            ) from None
        patches.append((weight, delta * (lora.te_weight if kind == "te" else lora.unet_weight)))
    if not patches:
        raise InvalidRequest(
            f"LoRA {lora.name!r} matches none of this model's layers; it was made for another architecture than {family.upper()}"
        )
    if missing:
        log.warning("LoRA %s: %d of %d layers have no counterpart in the model", lora.name, len(missing), len(layers))
    return patches


@contextmanager
def apply_loras(model: LoadedModel, loras: list[LoraFile], library: LoraLibrary | None = None) -> Iterator[None]:
    """Merge the LoRAs into `model` for the duration of the block, then restore its weights."""
    backups: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    try:
        for lora in loras:
            if library is None:
                raise ModelLoadError("no LoRA library to read LoRA files from")
            patches = lora_patches(model.pipe, model.family, lora, library.load(lora))
            with torch.no_grad():
                for weight, delta in patches:
                    backups.setdefault(id(weight), (weight, weight.detach().clone()))
                    weight.add_(delta.to(weight.device, weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for weight, original in backups.values():
                weight.copy_(original)
