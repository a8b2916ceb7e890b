"""Single-file checkpoints: a tiny model saved in the original layout loads offline and gives
the same image as its diffusers folder; architectures are detected; bad files are explained."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kakumei.engine.single_file import (
    ARCHITECTURES,
    bundled_config,
    detect_architecture,
    save_single_file,
)
from kakumei.errors import InvalidRequest, ModelLoadError
from kakumei.schemas import GenerationRequest

from breadth_helpers import family_ref

BASE = {"prompt": "a red fox in snow", "steps": 3, "width": 64, "height": 64, "seed": 11}


@pytest.fixture(scope="module")
def single_file(breadth_home: Path, breadth_engine) -> Path:
    folder_pipe = breadth_engine.load(family_ref(breadth_home, "sd1")).pipe
    target = breadth_home / "models" / "checkpoints"
    target.mkdir(exist_ok=True)
    return save_single_file(folder_pipe, target / "tiny-single.safetensors")


def test_single_file_round_trip_gives_the_folders_image(breadth_engine, breadth_home, single_file) -> None:
    from_folder = breadth_engine.generate(GenerationRequest(**BASE, model=family_ref(breadth_home, "sd1"))).images[0]
    from_file = breadth_engine.generate(GenerationRequest(**BASE, model=str(single_file))).images[0]
    assert from_file.image.tobytes() == from_folder.image.tobytes()
    assert from_file.metadata["model"]["architecture"] == "sd1"
    assert "Model: tiny-single," in from_file.infotext


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_repeat_load_maps_the_converted_components(breadth_home, single_file, dtype: str) -> None:
    """The first load converts the original layout and keeps each component in the weight
    cache; a later process builds the pipeline from those mapped files (and, in bf16 on a
    CPU, packs the UNet), and every image is the first load's, the folder's in fp32."""
    from kakumei.config import load_settings
    from kakumei.engine import packing, weights
    from kakumei.engine.pipeline import Engine

    settings = load_settings({"model": "kakumei:tiny", "device": "cpu", "dtype": dtype},
                             environ={"KAKUMEI_HOME": str(breadth_home), "HF_HUB_OFFLINE": "1"})
    images, mapped, packed = [], [], []
    for _ in range(2):  # a new engine each time: what a new process does
        engine = Engine(settings, cache_size=1)
        images.append(engine.generate(GenerationRequest(**BASE, model=str(single_file))).images[0].image.tobytes())
        pipe = engine.load(str(single_file)).pipe
        mapped.append([weights.is_mapped(next(getattr(pipe, n).parameters())) for n in ("unet", "vae", "text_encoder")])
        packed.append(hasattr(pipe.unet.conv_in, packing._PACKED))
    assert mapped == [[True, True, True]] * 2  # the first load maps the files it has just written
    assert images[0] == images[1]
    assert packed == [dtype == "bfloat16"] * 2
    if dtype == "float32":
        folder = Engine(settings).generate(GenerationRequest(**BASE, model=family_ref(breadth_home, "sd1"))).images[0]
        assert images[1] == folder.image.tobytes()


def test_checkpoint_is_found_by_name_in_an_a1111_layout(breadth_engine, breadth_home, single_file) -> None:
    a1111 = breadth_home / "models" / "Stable-diffusion"
    a1111.mkdir(exist_ok=True)
    shutil.copy(single_file, a1111 / "from-a1111.safetensors")
    source = breadth_engine.resolve_model_name("from-a1111")
    assert source.kind == "file" and source.name == "from-a1111"


def test_truncated_checkpoint_is_explained(breadth_engine, breadth_home, single_file, tmp_path) -> None:
    broken = tmp_path / "broken.safetensors"
    data = single_file.read_bytes()
    broken.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelLoadError, match="truncated"):
        breadth_engine.generate(GenerationRequest(**BASE, model=str(broken)))


def test_ckpt_needs_permission(breadth_engine, breadth_home, single_file, tmp_path) -> None:
    from safetensors.torch import load_file

    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": load_file(str(single_file))}, ckpt)
    with pytest.raises(InvalidRequest, match="KAKUMEI_ALLOW_PICKLE"):
        breadth_engine.generate(GenerationRequest(**BASE, model=str(ckpt)))


def test_ckpt_loads_when_allowed(breadth_home, single_file, tmp_path) -> None:
    from safetensors.torch import load_file

    from kakumei.config import load_settings
    from kakumei.engine.pipeline import Engine

    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": load_file(str(single_file))}, ckpt)
    settings = load_settings(
        {"model": "kakumei:tiny", "device": "cpu", "allow_pickle": True},
        environ={"KAKUMEI_HOME": str(breadth_home)},
    )
    image = Engine(settings).generate(GenerationRequest(**BASE, model=str(ckpt))).images[0]
    assert image.metadata["model"]["architecture"] == "sd1"


def _shapes(**extra: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3), **extra}


V2 = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
XL = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
REFINER = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"


@pytest.mark.parametrize(
    ("shapes", "name", "arch"),
    [
        (_shapes(), "v1-5-pruned-emaonly.safetensors", "sd1"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, "sd-v1-5-inpainting.ckpt", "sd1-inpaint"),
        (_shapes(**{V2: (320, 1024)}), "v2-1_768-ema-pruned.safetensors", "sd2-v"),
        (_shapes(**{V2: (320, 1024)}), "v2-1_512-ema-pruned.safetensors", "sd2"),
        (_shapes(**{XL: (1280,)}), "sd_xl_base_1.0.safetensors", "sdxl"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3), REFINER: (1280,)}, "sd_xl_refiner_1.0.safetensors", "sdxl-refiner"),
    ],
)
def test_architecture_detection(shapes: dict, name: str, arch: str) -> None:
    assert detect_architecture(shapes, name) == arch


def test_non_sd_file_is_explained() -> None:
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        detect_architecture({"lora_unet_x.lora_down.weight": (4, 32)}, "a-lora.safetensors")


# Parameter counts of the public models: the bundled configs must build exactly these networks.
EXPECTED_PARAMS = {
    ("sd1", "unet"): 859_520_964,
    ("sd2-v", "unet"): 865_910_724,
    ("sdxl", "unet"): 2_567_463_684,
    ("sd1", "vae"): 83_653_863,
    ("sd1", "text_encoder"): 123_060_480,
    ("sd2-v", "text_encoder"): 340_387_840,
    ("sdxl", "text_encoder_2"): 694_659_840,
}


@pytest.mark.parametrize(("arch", "part"), list(EXPECTED_PARAMS))
def test_bundled_configs_build_the_public_networks(arch: str, part: str) -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = dict(bundled_config(arch)["parts"][part])
    with init_empty_weights():
        if part == "unet":
            model = UNet2DConditionModel.from_config(config)
        elif part == "vae":
            model = AutoencoderKL.from_config(config)
        else:
            cls = CLIPTextModelWithProjection if part == "text_encoder_2" else CLIPTextModel
            model = cls(CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")}))
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[(arch, part)]


def test_every_architecture_has_a_config() -> None:
    for arch in ARCHITECTURES:
        spec = bundled_config(arch)
        assert spec["model_index"]["_class_name"].startswith("StableDiffusion")
