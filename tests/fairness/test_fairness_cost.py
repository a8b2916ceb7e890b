from __future__ import annotations

import pytest

from kakumei.fairness.cost import model_factor, request_cost
from kakumei.schemas import GenerationRequest


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
