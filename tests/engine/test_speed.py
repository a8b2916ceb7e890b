"""The CPU fast path: which models move to bf16, and that they still generate."""

from __future__ import annotations

import torch

from kakumei.engine import speed
from kakumei.engine.tiny import build_tiny_components


def _pipe():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**build_tiny_components(), requires_safety_checker=False)


def test_small_models_stay_fp32() -> None:
    pipe = _pipe()
    assert speed.apply_fast_path(pipe, torch.device("cpu"), torch.float32, auto_dtype=True) == torch.float32
    assert pipe.unet.dtype == torch.float32
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_full_size_models_move_to_bf16_where_native(monkeypatch) -> None:
    monkeypatch.setattr(speed, "BF16_MIN_UNET_PARAMS", 0)  # the tiny UNet stands in for SD 1.5
    pipe = _pipe()
    want = torch.bfloat16 if speed.cpu_has_native_bf16() else torch.float32
    assert speed.apply_fast_path(pipe, torch.device("cpu"), torch.float32, auto_dtype=True) == want
    assert pipe.unet.dtype == want and pipe.vae.dtype == want


def test_an_explicit_dtype_is_kept(monkeypatch) -> None:
    monkeypatch.setattr(speed, "BF16_MIN_UNET_PARAMS", 0)
    pipe = _pipe()
    assert speed.apply_fast_path(pipe, torch.device("cpu"), torch.float32, auto_dtype=False) == torch.float32
    assert pipe.unet.dtype == torch.float32


def test_bf16_engine_generates_deterministically(tiny_settings) -> None:
    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest

    engine = Engine(tiny_settings.model_copy(update={"dtype": "bfloat16"}))
    req = GenerationRequest(prompt="fox", steps=2, width=64, height=64, seed=3)
    a, b = engine.generate(req).images[0], engine.generate(req).images[0]
    assert a.png == b.png and a.metadata["dtype"] == "bfloat16"
