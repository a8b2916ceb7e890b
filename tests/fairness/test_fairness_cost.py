from __future__ import annotations

import pytest

import base64
import io

from PIL import Image

from kakumei.fairness.cost import model_factor, request_cost, work_size
from kakumei.fairness.limits import FreeCaps, over_free_caps
from kakumei.schemas import GenerationRequest


def _png_b64() -> str:
    out = io.BytesIO()
    Image.new("RGB", (512, 512), (10, 20, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


TINY_PNG_B64 = _png_b64()


def test_reference_request_costs_one_unit() -> None:
    assert request_cost(GenerationRequest(width=512, height=512, steps=20), "sd15") == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("change", "factor"),
    [
        ({"steps": 40}, 2.0),
        ({"width": 1024}, 2.0),
        ({"width": 1024, "height": 1024}, 4.0),
        ({"batch_size": 3}, 3.0),
        ({"batch_size": 2, "n_iter": 2}, 4.0),
    ],
)
def test_cost_is_proportional_to_steps_pixels_and_images(change: dict, factor: float) -> None:
    base = dict(width=512, height=512, steps=20)
    assert request_cost(GenerationRequest(**{**base, **change}), "sd15") == pytest.approx(factor)


def test_bigger_models_cost_more_at_the_same_size() -> None:
    request = GenerationRequest(width=1024, height=1024, steps=20)
    assert request_cost(request, "stabilityai/stable-diffusion-xl-base-1.0") > request_cost(request, "sd15")
    assert model_factor("some/unknown-model") == 1.0


def test_every_pass_is_counted() -> None:
    base = GenerationRequest(prompt="x", width=512, height=512, steps=20)
    one = request_cost(base, "sd15")
    # hires: the first pass plus int(40 x 0.5) = 20 steps at 1024x1024 (four times the pixels)
    hires = base.model_copy(update={"enable_hr": True, "hr_scale": 2.0, "hr_second_pass_steps": 40,
                                    "denoising_strength": 0.5})
    assert request_cost(hires, "sd15") == pytest.approx(one * (1 + 4))
    # batch and iterations multiply every pass
    assert request_cost(hires.model_copy(update={"batch_size": 2, "n_iter": 3}), "sd15") == pytest.approx(one * 5 * 6)
    # img2img runs steps x strength
    img2img = base.model_copy(update={"init_images": [TINY_PNG_B64], "denoising_strength": 0.25})
    assert request_cost(img2img, "sd15") == pytest.approx(one * 0.25)
    # the refiner's steps cost what the refiner model costs: 16 base steps on SD 1.5, 4 on an XL refiner
    refined = base.model_copy(update={"refiner_checkpoint": "sdxl-refiner", "refiner_switch_at": 0.8})
    assert request_cost(refined, "sd15") == pytest.approx(one * (0.8 + 0.2 * 2.0))


def test_the_free_tier_sees_the_hires_output_and_its_steps() -> None:
    hires = GenerationRequest(prompt="x", width=512, height=512, steps=20, enable_hr=True, hr_scale=2.0,
                              hr_second_pass_steps=150)
    size = work_size(hires)
    assert (size.width, size.height, size.steps, size.images) == (1024, 1024, 150, 1)
    assert over_free_caps(size.width, size.height, size.steps, size.images, FreeCaps(1024 * 1024, 50, 4)) == (
        "150 steps; the free tier allows 50 now")
