"""Weights read straight into the run's dtype and layout (weights.py): the same model as the
library's loader gives, and the library's loader wherever the files have another layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kakumei.engine import speed, weights
from kakumei.engine.tiny import ensure_tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


def _library(folder: Path, name: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cls = UNet2DConditionModel if name == "unet" else AutoencoderKL
    return cls.from_pretrained(folder / name, dtype=dtype)


@pytest.mark.parametrize("name", ["unet", "vae"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_component_equals_the_library_one(tiny_folder: Path, name: str, dtype: torch.dtype) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cls = UNet2DConditionModel if name == "unet" else AutoencoderKL
    ours = weights.load_component(tiny_folder, name, cls, dtype, channels_last=True)
    assert ours is not None and not ours.training
    theirs = _library(tiny_folder, name, torch.float32)
    mine = dict(ours.state_dict())
    assert mine.keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        # fp32 -> bf16 rounds as Tensor.to does: the same bits as converting after loading
        assert torch.equal(mine[key], value.to(dtype)), key
        assert mine[key].dtype == dtype
        if value.dim() == 4:
            assert mine[key].is_contiguous(memory_format=torch.channels_last), key
    assert ours.config == theirs.config or dict(ours.config) | {"_name_or_path": ""} == dict(theirs.config) | {"_name_or_path": ""}


def test_other_layouts_go_to_the_library_loader(tiny_folder: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "renamed"
    shutil.copytree(tiny_folder, folder)
    # a key the model does not name (as in legacy files): strict loading refuses, None comes back
    from safetensors.torch import load_file, save_file

    path = folder / "unet" / weights.WEIGHTS_FILE
    state = load_file(path)
    key = next(iter(state))
    state["legacy." + key] = state.pop(key)
    save_file(state, path)
    assert weights.load_component(folder, "unet", UNet2DConditionModel, torch.float32, True) is None
    # sharded or pickle files: no single weights file, None as well
    path.unlink()
    assert weights.load_component(folder, "unet", UNet2DConditionModel, torch.float32, True) is None
    assert weights.folder_unet_parameters(folder) is None


def test_parameter_count_from_the_header(tiny_folder: Path) -> None:
    unet = _library(tiny_folder, "unet", torch.float32)
    assert weights.folder_unet_parameters(tiny_folder) == sum(p.numel() for p in unet.state_dict().values())


def test_a_truncated_file_is_refused(tiny_folder: Path, tmp_path: Path) -> None:
    path = tmp_path / weights.WEIGHTS_FILE
    data = (tiny_folder / "unet" / weights.WEIGHTS_FILE).read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="ends inside tensor"):
        weights.read_tensors(path, torch.float32, False)


def _image(settings, monkeypatch, streamed: bool) -> bytes:
    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest

    monkeypatch.setattr(weights, "STREAMED_COMPONENTS", weights.STREAMED_COMPONENTS if streamed else ())
    engine = Engine(settings)
    png = engine.generate(GenerationRequest(prompt="a fox", steps=2, width=64, height=64, seed=11)).images[0].png
    assert engine.load().pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    return png


def test_streamed_load_gives_the_same_png_as_the_library_loader(tiny_settings, monkeypatch) -> None:
    assert _image(tiny_settings, monkeypatch, True) == _image(tiny_settings, monkeypatch, False)


def test_bf16_is_decided_before_loading(tiny_settings, monkeypatch) -> None:
    """A full-size model on a bf16 CPU is read in bf16: the pipeline comes back from the
    loader in bf16, the fast path has nothing left to convert."""
    from kakumei.engine import models
    from kakumei.engine.pipeline import Engine

    if not speed.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    monkeypatch.setattr(speed, "BF16_MIN_UNET_PARAMS", 0)  # the tiny UNet stands in for SD 1.5
    loaded_as = []
    real = models._load_folder

    def spy(folder, dtype, channels_last):
        pipe = real(folder, dtype, channels_last)
        loaded_as.append((pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype))
        return pipe

    monkeypatch.setattr(models, "_load_folder", spy)
    model = Engine(tiny_settings).load()
    assert loaded_as == [(torch.bfloat16,) * 3] and model.dtype == torch.bfloat16


def test_model_index_without_streamable_parts(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert weights.streamed_components(tmp_path, torch.float32, True) == {}
    assert weights.streamed_components(tmp_path / "missing", torch.float32, True) == {}
