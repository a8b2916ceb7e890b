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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_text_encoder_equals_the_library_one(tiny_folder: Path, tmp_path: Path, dtype: torch.dtype) -> None:
    """Read through the weight cache (converted, then mapped), the text encoder gives the
    encodings transformers' own loader gives, bit for bit."""
    from transformers import CLIPTextModel

    library = CLIPTextModel.from_pretrained(tiny_folder / "text_encoder", dtype=dtype).eval()
    cache = weights.WeightCache(tmp_path / "weights", 1 << 30)
    ids = torch.tensor([[49406, 320, 1929, 49407] + [49407] * 73])
    for _ in range(2):  # the second load maps the cache file the first one wrote
        ours = weights.load_text_encoder(tiny_folder, "text_encoder", CLIPTextModel, dtype, cache)
        assert ours is not None and ours.dtype == dtype and not ours.training
        with torch.inference_mode():
            a, b = library(ids, output_hidden_states=True), ours(ids, output_hidden_states=True)
        assert torch.equal(a.last_hidden_state, b.last_hidden_state)
        assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))
    assert len(list((tmp_path / "weights").glob("*.safetensors"))) == 1


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
    monkeypatch.setattr(weights, "STREAMED_TEXT_ENCODERS", weights.STREAMED_TEXT_ENCODERS if streamed else ())
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

    def spy(folder, dtype, channels_last, *rest):
        pipe = real(folder, dtype, channels_last, *rest)
        loaded_as.append((pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype))
        return pipe

    monkeypatch.setattr(models, "_load_folder", spy)
    model = Engine(tiny_settings).load()
    assert loaded_as == [(torch.bfloat16,) * 3] and model.dtype == torch.bfloat16


def test_model_index_without_streamable_parts(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert weights.streamed_components(tmp_path, torch.float32, True) == {}
    assert weights.streamed_components(tmp_path / "missing", torch.float32, True) == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_cache_maps_the_converted_tensors(tiny_folder: Path, tmp_path: Path, dtype: torch.dtype) -> None:
    """The first load converts and writes the cache file; the second maps it: the same
    values, dtype and layout as converting, and writing into a mapped weight (a LoRA merge)
    changes neither the file nor the next load."""
    source = tiny_folder / "unet" / weights.WEIGHTS_FILE
    cache = weights.WeightCache(tmp_path / "weights", 1 << 30)
    converted = weights.read_tensors(source, dtype, True)
    first = cache.load(source, dtype, True)
    cached = cache.path_for(source, dtype, True)
    assert cached.is_file() and cached.stat().st_size < source.stat().st_size + (1 << 20)
    mapped = cache.load(source, dtype, True)
    assert mapped.keys() == converted.keys() == first.keys()
    for key, value in converted.items():
        assert torch.equal(mapped[key], value) and mapped[key].dtype == value.dtype, key
        if value.dim() == 4:
            assert mapped[key].is_contiguous(memory_format=torch.channels_last), key
    conv = next(k for k, v in mapped.items() if v.dim() == 4)
    mapped[conv].add_(1)  # copy-on-write: only this process's page changes
    assert torch.equal(cache.load(source, dtype, True)[conv], converted[conv])
    # another dtype or layout is another file, and a contiguous one maps contiguous
    assert cache.path_for(source, torch.float16, True) != cached != cache.path_for(source, dtype, False)
    cache.load(source, dtype, False)
    plain = cache.load(source, dtype, False)
    assert all(t.is_contiguous() and torch.equal(t, converted[k]) for k, t in plain.items())


def test_weight_cache_follows_the_source_and_its_bound(tiny_folder: Path, tmp_path: Path) -> None:
    import os

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    unet, vae = (folder / n / weights.WEIGHTS_FILE for n in ("unet", "vae"))
    size = sum(t.numel() * t.element_size() for t in weights.read_tensors(unet, torch.float32, True).values())
    cache = weights.WeightCache(tmp_path / "weights", size + (64 << 10))
    cache.load(unet, torch.float32, True)
    old = cache.path_for(unet, torch.float32, True)
    # an edited source (new mtime) is not answered by the old copy
    stat = unet.stat()
    os.utime(unet, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.path_for(unet, torch.float32, True) != old
    # the bound: the newcomer pushes out the least recently used file
    cache.load(vae, torch.float32, True)
    files = list((tmp_path / "weights").glob("*.safetensors"))
    assert files == [cache.path_for(vae, torch.float32, True)] and not old.exists()
    # a cache of 0 bytes writes nothing
    off = weights.WeightCache(tmp_path / "off", 0)
    off.load(vae, torch.float32, True)
    assert not (tmp_path / "off").exists()


def test_a_damaged_cache_file_is_converted_again(tiny_folder: Path, tmp_path: Path) -> None:
    source = tiny_folder / "vae" / weights.WEIGHTS_FILE
    cache = weights.WeightCache(tmp_path / "weights", 1 << 30)
    cache.load(source, torch.bfloat16, True)
    cached = cache.path_for(source, torch.bfloat16, True)
    with cached.open("r+b") as fh:
        fh.truncate(cached.stat().st_size // 2)
    again = cache.load(source, torch.bfloat16, True)
    expected = weights.read_tensors(source, torch.bfloat16, True)
    assert all(torch.equal(again[k], v) for k, v in expected.items())
    assert cached.stat().st_size > source.stat().st_size // 3  # rewritten whole


def test_a_hub_model_in_the_local_cache_loads_as_its_folder(tiny_settings, tiny_folder: Path, tmp_path: Path, monkeypatch) -> None:
    """A hub id whose snapshot is in the Hugging Face cache takes the folder path: its UNet,
    VAE and text encoder come mapped from the weight cache, and the image is the folder's."""
    from huggingface_hub import constants

    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest

    revision = "0" * 40
    repo = tmp_path / "hub" / "models--kakumei-test--tiny"
    shutil.copytree(tiny_folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    request = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 3}
    engine = Engine(tiny_settings)
    hub = engine.generate(GenerationRequest(**request, model="kakumei-test/tiny"))
    loaded = engine.load("kakumei-test/tiny")
    assert loaded.source.kind == "hub"
    assert all(weights.is_mapped(next(getattr(loaded.pipe, n).parameters())) for n in ("unet", "vae", "text_encoder"))
    folder = engine.generate(GenerationRequest(**request, model=str(tiny_folder)))
    assert hub.images[0].image.tobytes() == folder.images[0].image.tobytes()
