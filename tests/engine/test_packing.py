"""Packed oneDNN weights for a CPU bf16 UNet (packing.py): the same numbers as eager mode, a
new packing after an in-place weight change, and the dense pages handed back only where the
weight cache's file still holds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kakumei.engine import packing, weights
from kakumei.engine.tiny import ensure_tiny_model

pytestmark = pytest.mark.skipif(not packing.packing_available(), reason="this torch has no oneDNN packing ops")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


def _bf16_unet(folder: Path, cache: weights.WeightCache | None = None) -> torch.nn.Module:
    """The tiny UNet in bf16, channels-last: mapped from `cache`, or in ordinary memory."""
    from diffusers import UNet2DConditionModel

    if cache is not None:
        return weights.load_component(folder, "unet", UNet2DConditionModel, torch.bfloat16, True, cache)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.bfloat16).eval()
    return unet.to(memory_format=torch.channels_last)


def _layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in unet.modules() if type(m) in (torch.nn.Conv2d, torch.nn.Linear)]


def _step(unet: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    text = torch.randn(latents.shape[0], 77, unet.config.cross_attention_dim, generator=gen).to(torch.bfloat16)
    with torch.inference_mode():
        return unet(latents, torch.tensor(500), text).sample


def _latents(batch: int, side: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(side)
    latents = torch.randn(batch, 4, side, side, generator=gen).to(torch.bfloat16)
    return latents.to(memory_format=torch.channels_last)


def test_packed_unet_computes_what_eager_mode_does(tiny_folder: Path, tmp_path: Path) -> None:
    eager = _bf16_unet(tiny_folder)
    packed = _bf16_unet(tiny_folder, weights.WeightCache(tmp_path / "weights", 1 << 30))
    layers = packing.pack_unet(packed)
    assert layers == len(_layers(packed)) > 0
    for batch, side in ((2, 8), (1, 16), (2, 8)):  # a second shape packs again, the first again
        assert torch.equal(_step(packed, _latents(batch, side)), _step(eager, _latents(batch, side)))
    # the packed path really ran: every layer holds a packed copy keyed by its last input
    assert all(hasattr(m, packing._PACKED) for m in _layers(packed))
    # an in-place change of the weights (what a LoRA merge does) is seen at the next call
    with torch.no_grad():
        for model in (eager, packed):
            model.conv_in.weight.add_(0.25)
            next(m for n, m in model.named_modules() if n.endswith("attn1.to_q")).weight.mul_(1.5)
    after = _step(packed, _latents(2, 8))
    assert torch.equal(after, _step(eager, _latents(2, 8)))
    assert not torch.equal(after, _step(_bf16_unet(tiny_folder), _latents(2, 8)))


def test_weights_in_ordinary_memory_stay_in_eager_mode(tiny_folder: Path) -> None:
    """Packing weights that are their only copy would double their memory."""
    unet = _bf16_unet(tiny_folder)
    packing.pack_unet(unet)
    assert torch.equal(_step(unet, _latents(2, 8)), _step(_bf16_unet(tiny_folder), _latents(2, 8)))
    assert not any(hasattr(m, packing._PACKED) for m in _layers(unet))


def test_outside_inference_the_layers_run_eager_mode(tiny_folder: Path, tmp_path: Path) -> None:
    unet = _bf16_unet(tiny_folder, weights.WeightCache(tmp_path / "weights", 1 << 30))
    packing.pack_unet(unet)
    latents = _latents(1, 8)
    text = torch.zeros(1, 77, unet.config.cross_attention_dim, dtype=torch.bfloat16)
    out = unet(latents, torch.tensor(10), text).sample  # autograd on: the packed ops have no gradient
    out.float().sum().backward()
    assert unet.conv_in.weight.grad is not None and not hasattr(unet.conv_in, packing._PACKED)


def _resident_kib(address: int) -> int:
    """Rss of the mapping holding `address`, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "Rss:":
            return int(line.split()[1])
    raise AssertionError("no mapping holds that address")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_only_unwritten_mapped_pages_are_released(tiny_folder: Path, tmp_path: Path) -> None:
    source = tiny_folder / "unet" / weights.WEIGHTS_FILE
    cache = weights.WeightCache(tmp_path / "weights", 1 << 30)
    converted = weights.read_tensors(source, torch.bfloat16, True)
    cache.load(source, torch.bfloat16, True)
    mapped = cache.load(source, torch.bfloat16, True)
    big = sorted(mapped, key=lambda k: -mapped[k].numel())[:2]
    for name in big:
        assert mapped[name].numel() * 2 >= 4 * 4096, "the tiny UNet's largest weights span pages"
    tensor = mapped[big[0]]
    assert float(tensor.float().sum()) == float(converted[big[0]].float().sum())  # resident now
    before = _resident_kib(tensor.data_ptr())
    released = weights.release_mapped_pages(tensor)
    assert released >= tensor.numel() * 2 - 2 * 4096
    assert _resident_kib(tensor.data_ptr()) <= before - released // 1024
    assert torch.equal(tensor, converted[big[0]])  # read back from the file
    assert weights.release_mapped_pages(converted[big[0]]) == 0  # ordinary memory: never
    with torch.no_grad():
        mapped[big[1]].add_(1)  # written: the private pages are the only copy
    assert weights.release_mapped_pages(mapped[big[1]]) == 0
    assert weights.release_mapped_pages(tensor) > 0  # each tensor has its own version counter
    assert torch.equal(mapped[big[1]], converted[big[1]] + 1)
    assert weights.is_mapped(tensor) and weights.is_mapped(mapped[big[1]]) and not weights.is_mapped(converted[big[0]])


def _png(settings, monkeypatch, pack: bool) -> tuple[bytes, int]:
    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest

    if not pack:
        monkeypatch.setattr(packing, "pack_unet", lambda unet: 0)
    engine = Engine(settings.model_copy(update={"dtype": "bfloat16"}))
    png = engine.generate(GenerationRequest(prompt="a fox", steps=2, width=64, height=64, seed=5)).images[0].png
    unet = engine.load().pipe.unet
    monkeypatch.undo()
    return png, sum(hasattr(m, packing._PACKED) for m in unet.modules())


def test_a_bf16_cpu_model_packs_and_keeps_its_pixels(tiny_settings, monkeypatch) -> None:
    packed_png, packed_layers = _png(tiny_settings, monkeypatch, True)
    eager_png, eager_layers = _png(tiny_settings, monkeypatch, False)
    assert packed_layers > 0 and eager_layers == 0
    assert packed_png == eager_png
