"""Textual-inversion embeddings (A1111 `.pt`/`.safetensors`, SDXL `clip_l`/`clip_g` pairs),
found by name in the prompt as A1111 finds them."""

from __future__ import annotations

from pathlib import Path

import torch

from kakumei.engine.checkpoints import read_state_dict
from kakumei.engine.lora import find_files
from kakumei.engine.models import HashCache
from kakumei.errors import InvalidRequest

EMBEDDING_DIRS = ("embeddings",)
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


def embedding_vectors(state: dict, name: str) -> dict[str, torch.Tensor]:
    """{"clip_l": (n, d)} for SD 1/2 files, {"clip_l", "clip_g"} for SDXL files."""
    if "clip_l" in state and "clip_g" in state:
        return {"clip_l": state["clip_l"].float(), "clip_g": state["clip_g"].float()}
    if "string_to_param" in state:  # A1111's own training output
        params = state["string_to_param"]
        tensor = next(iter(params.values()))
    elif "emb_params" in state:
        tensor = state["emb_params"]
    else:
        tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise InvalidRequest(f"embedding {name!r} is not in a format kakumei knows (A1111 or diffusers textual inversion)")
        tensor = tensors[0]
    tensor = tensor.float()
    return {"clip_l": tensor.unsqueeze(0) if tensor.dim() == 1 else tensor}


class EmbeddingLibrary:
    """Embeddings under <models>/embeddings, loaded when their name appears in a prompt."""

    def __init__(self, models_dir: Path, hashes: HashCache, allow_pickle: bool) -> None:
        self._models_dir = models_dir
        self._hashes = hashes
        self._allow_pickle = allow_pickle
        self._paths: dict[str, Path] = {}

    def names(self) -> dict[str, Path]:
        return find_files(self._models_dir, EMBEDDING_DIRS, EMBEDDING_SUFFIXES)

    def for_text(self, text: str, family: str) -> dict[str, dict[str, torch.Tensor]]:
        """The embeddings whose names occur in `text` (CLIP lowercases, so does the match)."""
        lowered = text.lower()
        found: dict[str, dict[str, torch.Tensor]] = {}
        for name, path in self.names().items():
            if name.lower() not in lowered:
                continue
            vectors = embedding_vectors(read_state_dict(path, self._allow_pickle, f"embedding {name!r}"), name)
            if ("clip_g" in vectors) != (family == "sdxl"):
                raise InvalidRequest(
                    f"embedding {name!r} was made for {'SDXL' if 'clip_g' in vectors else 'SD 1/2'}; the model is "
                    f"{family.upper()}. Remove it from the prompt or use one made for this model"
                )
            found[name] = vectors
            self._paths[name] = path
        return found

    def info(self, name: str) -> dict[str, str]:
        return {"name": name, "sha256": self._hashes.file_sha256(self._paths[name])}
