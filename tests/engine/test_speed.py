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


def test_model_cache_evicts_least_recently_used_by_bytes() -> None:
    from types import SimpleNamespace

    from kakumei.engine.models import ModelCache, pipeline_bytes

    def fake(mb: int):
        module = torch.nn.Linear(1, mb * 1024 * 256, bias=False)  # mb MiB of float32
        return SimpleNamespace(pipe=SimpleNamespace(components={"unet": module}))

    assert pipeline_bytes(fake(1).pipe) == 1 << 20
    cache = ModelCache(capacity=10, budget_bytes=int(2.5 * (1 << 20)))
    loads = []

    def get(name: str):
        return cache.get((name, "cpu", "float32"), lambda: loads.append(name) or fake(1))

    get("a"), get("b"), get("a")  # a is now the most recent
    get("c")  # a third MiB does not fit in 2.5: b (least recently used) goes
    assert loads == ["a", "b", "c"]
    get("a")
    assert loads == ["a", "b", "c"]  # still cached
    get("b")
    assert loads == ["a", "b", "c", "b"]


def test_model_cache_count_bound() -> None:
    from types import SimpleNamespace

    from kakumei.engine.models import ModelCache

    cache = ModelCache(capacity=1)
    loads = []
    for name in "aab":
        cache.get((name, "cpu", "float32"), lambda n=name: loads.append(n) or SimpleNamespace(pipe=SimpleNamespace(components={})))
    assert loads == ["a", "b"] and len(cache.loaded()) == 1


def test_repeated_prompts_are_encoded_once(engine) -> None:
    from kakumei.schemas import GenerationRequest

    req = GenerationRequest(prompt="a prompt seen twice, unique to this test", negative_prompt="blur",
                            steps=2, width=64, height=64, seed=1)
    first = engine.generate(req).images[0].png
    hits = engine._prompts.hits
    second = engine.generate(req.model_copy(update={"seed": 1})).images[0].png
    assert engine._prompts.hits == hits + 1
    assert first == second  # a cached encoding gives the same image


def test_compiled_unet_gives_the_same_image(tiny_settings) -> None:
    """KAKUMEI_COMPILE: the same picture as eager mode (within float noise), LoRA-safe names."""
    import numpy as np

    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest

    req = GenerationRequest(prompt="fox", steps=2, width=64, height=64, seed=5)
    eager = Engine(tiny_settings).generate(req).images[0].image
    engine = Engine(tiny_settings.model_copy(update={"compile": True}))
    compiled = engine.generate(req).images[0].image
    unet = engine.load().pipe.unet
    assert unet._compiled_call_impl is not None  # really compiled
    assert any(name.startswith("down_blocks.") for name, _ in unet.named_modules())  # names kept
    diff = np.abs(np.asarray(eager, dtype=float) - np.asarray(compiled, dtype=float))
    assert diff.mean() < 1.0
