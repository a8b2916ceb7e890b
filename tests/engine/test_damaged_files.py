"""A damaged or wrong weight file is one sentence for a person: what is wrong with which
file (named once) and what to do; never a Python error's text."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kakumei.errors import KakumeiError
from kakumei.schemas import GenerationRequest

INTERNALS = ("object", "subscriptable", "attribute", "Error", "Traceback", "KeyError")


def _header_only(path: Path, header: object) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def _damaged(tmp_path: Path, kakumei_home: Path) -> dict[str, Path]:
    real = (kakumei_home / "models" / "kakumei-tiny" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 20)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(real[: len(real) // 2])
    wrong = tmp_path / "wrong.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3)}, str(wrong))
    unet_only = tmp_path / "unet-only.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, str(unet_only))
    return {
        "garbage": garbage,
        "truncated": truncated,
        "wrong": wrong,
        "unet-only": unet_only,
        "int-header": _header_only(tmp_path / "int-header.safetensors", {"x": 5}),
        "list-header": _header_only(tmp_path / "list-header.safetensors", [1, 2]),
    }


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong", "unet-only", "int-header", "list-header"])
def test_damaged_checkpoint_is_one_sentence_naming_the_file_once(engine, kakumei_home, tmp_path, kind: str) -> None:
    path = _damaged(tmp_path, kakumei_home)[kind]
    request = GenerationRequest(prompt="a fox", steps=1, width=64, height=64, seed=1, model=str(path))
    with pytest.raises(KakumeiError) as caught:
        engine.generate(request)
    message = str(caught.value)
    assert "\n" not in message and ". " not in message, message
    assert message.count(path.name) == 1, message
    assert not any(word in message for word in INTERNALS), message
