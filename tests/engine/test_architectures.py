"""Every family runs through Engine.generate: SD 1, SD 2 (v-prediction), SDXL, and SDXL
with the refiner as a second stage."""

from __future__ import annotations

import pytest

from kakumei.errors import InvalidRequest
from kakumei.schemas import GenerationRequest

from breadth_helpers import family_ref

BASE = {"prompt": "a (red:1.2) fox in snow", "negative_prompt": "blurry", "steps": 4, "width": 64, "height": 64, "seed": 9}


@pytest.mark.parametrize(("family", "arch"), [("sd1", "sd1"), ("sd2-v", "sd2-v"), ("sdxl", "sdxl")])
def test_each_family_generates_deterministically(breadth_engine, breadth_home, family: str, arch: str) -> None:
    req = GenerationRequest(**BASE, model=family_ref(breadth_home, family))
    a, b = breadth_engine.generate(req).images[0], breadth_engine.generate(req).images[0]
    assert a.png == b.png
    assert a.image.size == (64, 64)
    assert a.metadata["model"]["architecture"] == arch


def test_sdxl_long_prompt_and_clip_skip(breadth_engine, breadth_home) -> None:
    ref = family_ref(breadth_home, "sdxl")
    long = breadth_engine.generate(GenerationRequest(**{**BASE, "prompt": " ".join(["fox"] * 120)}, model=ref)).images[0]
    skip = breadth_engine.generate(GenerationRequest(**BASE, model=ref, clip_skip=2)).images[0]
    plain = breadth_engine.generate(GenerationRequest(**BASE, model=ref)).images[0]
    assert skip.png != plain.png and long.png != plain.png


def test_sdxl_img2img(breadth_engine, breadth_home) -> None:
    from breadth_helpers import gradient_image

    from kakumei.images import encode_image_b64

    req = GenerationRequest(
        **{**BASE, "steps": 10}, model=family_ref(breadth_home, "sdxl"), init_images=[encode_image_b64(gradient_image())],
        denoising_strength=0.5,
    )
    assert breadth_engine.generate(req).images[0].image.size == (64, 64)


def test_refiner_finishes_an_sdxl_image(breadth_engine, breadth_home) -> None:
    base = family_ref(breadth_home, "sdxl")
    plain = breadth_engine.generate(GenerationRequest(**BASE, model=base)).images[0]
    refined = breadth_engine.generate(
        GenerationRequest(**BASE, model=base, refiner_checkpoint=family_ref(breadth_home, "sdxl-refiner"), refiner_switch_at=0.5)
    ).images[0]
    assert refined.png != plain.png
    assert "Refiner: tiny-sdxl-refiner [" in refined.infotext
    assert "Refiner switch at: 0.5" in refined.infotext
    assert refined.metadata["refiner"]["name"] == "tiny-sdxl-refiner"


def test_refiner_needs_an_sdxl_base(breadth_engine, breadth_home) -> None:
    req = GenerationRequest(**BASE, model=family_ref(breadth_home, "sd1"), refiner_checkpoint=family_ref(breadth_home, "sdxl-refiner"))
    with pytest.raises(InvalidRequest, match="refiner needs an SDXL base model"):
        breadth_engine.generate(req)


def test_refiner_alone_is_explained(breadth_engine, breadth_home) -> None:
    with pytest.raises(InvalidRequest, match="is an SDXL refiner"):
        breadth_engine.generate(GenerationRequest(**BASE, model=family_ref(breadth_home, "sdxl-refiner")))


def test_few_step_models_get_their_recommended_defaults(breadth_engine, breadth_home) -> None:
    import shutil

    turbo = breadth_home / "models" / "tiny-sdxl-turbo"
    if not turbo.exists():
        shutil.copytree(family_ref(breadth_home, "sdxl"), turbo)
    result = breadth_engine.generate(GenerationRequest(prompt="a fox", width=64, height=64, seed=1, model=str(turbo)))
    assert (result.request.steps, result.request.cfg_scale, result.request.scheduler) == (1, 0.0, "SGM Uniform")
    explicit = breadth_engine.generate(GenerationRequest(prompt="a fox", width=64, height=64, seed=1, steps=2, model=str(turbo)))
    assert explicit.request.steps == 2 and explicit.request.cfg_scale == 0.0
    assert "Steps: 2," in explicit.images[0].infotext
