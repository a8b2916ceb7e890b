"""LoRA tags: a kohya-format LoRA changes the image, is recorded with its hash, and leaves
the model as it was; wrong names and wrong architectures get clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kakumei.errors import InvalidRequest
from kakumei.schemas import GenerationRequest

from breadth_helpers import family_ref, png_pixels

BASE = {"prompt": "a red fox in snow", "steps": 3, "width": 64, "height": 64, "seed": 5}


def kohya_lora(pipe, prefix_te: str, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA in kohya's naming for every attention projection of `pipe`."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    parts = [("lora_unet_", pipe.unet), (prefix_te, pipe.text_encoder)]
    for prefix, component in parts:
        for name, module in component.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "q_proj", "v_proj")):
                key = name.replace(".", "_")
                if prefix != "lora_unet_" and not key.startswith("text_model_"):
                    key = "text_model_" + key
                base = prefix + key
                state[f"{base}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) * 0.5
                state[f"{base}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.5
                state[f"{base}.alpha"] = torch.tensor(float(rank))
    return state


@pytest.fixture(scope="module")
def loras(breadth_home: Path, breadth_engine) -> Path:
    folder = breadth_home / "models" / "lora"
    sd1 = breadth_engine.load(family_ref(breadth_home, "sd1")).pipe
    save_file(kohya_lora(sd1, "lora_te_"), str(folder / "furry.safetensors"), metadata={"ss_network_dim": "4"})
    xl = breadth_engine.load(family_ref(breadth_home, "sdxl")).pipe
    save_file(kohya_lora(xl, "lora_te1_"), str(folder / "xl_style.safetensors"))
    return folder


def test_lora_changes_the_image_and_is_recorded(breadth_engine, breadth_home, loras) -> None:
    ref = family_ref(breadth_home, "sd1")
    plain = breadth_engine.generate(GenerationRequest(**BASE, model=ref)).images[0]
    with_lora = breadth_engine.generate(GenerationRequest(**{**BASE, "prompt": BASE["prompt"] + " <lora:furry:0.8>"}, model=ref)).images[0]
    assert abs(png_pixels(plain.png) - png_pixels(with_lora.png)).mean() > 1.0
    (recorded,) = with_lora.metadata["loras"]
    assert recorded["name"] == "furry" and recorded["te_weight"] == 0.8
    assert len(recorded["sha256"]) == 64
    assert f"Lora hashes: \"furry: {recorded['addnet_hash'][:12]}\"" in with_lora.infotext
    assert "<lora:furry:0.8>" in with_lora.infotext.splitlines()[0]
    # the weights were restored: the same request without the tag gives the plain image again
    again = breadth_engine.generate(GenerationRequest(**BASE, model=ref)).images[0]
    assert again.png == plain.png


def test_lora_weight_zero_changes_nothing(breadth_engine, breadth_home, loras) -> None:
    ref = family_ref(breadth_home, "sd1")
    plain = breadth_engine.generate(GenerationRequest(**BASE, model=ref)).images[0]
    zero = breadth_engine.generate(GenerationRequest(**{**BASE, "prompt": BASE["prompt"] + "<lora:furry:0>"}, model=ref)).images[0]
    assert abs(png_pixels(plain.png) - png_pixels(zero.png)).max() <= 1


def test_sdxl_lora_works_on_sdxl(breadth_engine, breadth_home, loras) -> None:
    ref = family_ref(breadth_home, "sdxl")
    plain = breadth_engine.generate(GenerationRequest(**BASE, model=ref)).images[0]
    styled = breadth_engine.generate(GenerationRequest(**{**BASE, "prompt": "a fox <lora:xl_style:1>"}, model=ref)).images[0]
    assert plain.png != styled.png


def test_unknown_lora_name_is_explained(breadth_engine, breadth_home, loras) -> None:
    req = GenerationRequest(**{**BASE, "prompt": "a fox <lora:nope:1>"}, model=family_ref(breadth_home, "sd1"))
    with pytest.raises(InvalidRequest, match="unknown LoRA 'nope'.*furry"):
        breadth_engine.generate(req)


def test_lora_for_another_architecture_is_refused(breadth_engine, breadth_home, loras) -> None:
    req = GenerationRequest(**{**BASE, "prompt": "a fox <lora:xl_style:1>"}, model=family_ref(breadth_home, "sd1"))
    with pytest.raises(InvalidRequest, match="made for SDXL"):
        breadth_engine.generate(req)
    req = GenerationRequest(**{**BASE, "prompt": "a fox <lora:furry:1>"}, model=family_ref(breadth_home, "sdxl"))
    with pytest.raises(InvalidRequest, match="made for SD 1/2"):
        breadth_engine.generate(req)


def test_truncated_lora_is_explained(breadth_engine, breadth_home, loras) -> None:
    data = (loras / "furry.safetensors").read_bytes()
    (loras / "broken.safetensors").write_bytes(data[: len(data) // 2])
    req = GenerationRequest(**{**BASE, "prompt": "a fox <lora:broken:1>"}, model=family_ref(breadth_home, "sd1"))
    try:
        with pytest.raises(Exception, match="truncated or damaged"):
            breadth_engine.generate(req)
    finally:
        (loras / "broken.safetensors").unlink()


def test_sgm_names_map_to_diffusers() -> None:
    from kakumei.engine.lora import sgm_to_diffusers

    assert sgm_to_diffusers("input_blocks_4_1_transformer_blocks_0_attn1_to_q") == "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert sgm_to_diffusers("output_blocks_2_0_in_layers_2") == "up_blocks_0_resnets_2_conv1"
    assert sgm_to_diffusers("middle_block_1_proj_in") == "mid_block_attentions_0_proj_in"
    assert sgm_to_diffusers("input_blocks_3_0_op") == "down_blocks_0_downsamplers_0_conv"


def _bf16_images(breadth_home: Path, monkeypatch, pack: bool) -> tuple[list[bytes], int]:
    from kakumei.config import load_settings
    from kakumei.engine import packing
    from kakumei.engine.pipeline import Engine

    released = []
    if pack:
        real = packing.release_mapped_pages
        monkeypatch.setattr(packing, "release_mapped_pages", lambda t: released.append(real(t)) or released[-1])
    else:
        monkeypatch.setattr(packing, "pack_unet", lambda unet: 0)
    settings = load_settings({"model": "kakumei:tiny", "device": "cpu", "dtype": "bfloat16"},
                             environ={"KAKUMEI_HOME": str(breadth_home), "HF_HUB_OFFLINE": "1"})
    engine = Engine(settings, cache_size=1)
    ref = family_ref(breadth_home, "sd1")
    prompts = [BASE["prompt"], BASE["prompt"] + " <lora:furry:0.8>", BASE["prompt"]]
    pngs = [engine.generate(GenerationRequest(**{**BASE, "prompt": p}, model=ref)).images[0].png for p in prompts]
    packed = [m for m in engine.load(ref).pipe.unet.modules() if hasattr(m, packing._PACKED)]
    assert bool(packed) == pack
    monkeypatch.undo()
    return pngs, sum(released)


def test_a_lora_on_packed_bf16_weights_gives_eager_modes_images(breadth_home, loras, monkeypatch) -> None:
    """bf16 on a CPU packs the UNet's weights from the weight cache's mapping and hands their
    pages back; a LoRA merge writes those weights and its restore writes them back: both
    repack, and every image equals the unpacked engine's."""
    eager, _ = _bf16_images(breadth_home, monkeypatch, False)  # converts and writes the cache
    packed, released = _bf16_images(breadth_home, monkeypatch, True)  # maps it
    assert released > 0
    assert packed == eager
    assert packed[0] != packed[1] and packed[0] == packed[2]
