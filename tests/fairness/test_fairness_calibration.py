"""The calibrated cost factor rule: observed seconds per unit, relative to SD 1.5, clamped."""

from __future__ import annotations

import pytest

from kakumei.fairness.cost import Speed, base_units, calibrated_factor, calibrated_factors, request_cost
from kakumei.schemas import GenerationRequest

REF = "sd15"
XL = "my-sdxl"  # fixed factor 2


def test_the_fixed_factor_stays_until_both_have_enough_samples() -> None:
    few = {(XL, "cuda"): Speed(3.0, 19), (REF, "cuda"): Speed(1.0, 50)}
    assert calibrated_factor(XL, few, min_samples=20, clamp=4.0) == 2.0
    no_ref = {(XL, "cuda"): Speed(3.0, 50), (REF, "cuda"): Speed(1.0, 19)}
    assert calibrated_factor(XL, no_ref, min_samples=20, clamp=4.0) == 2.0
    # The reference measured on another class says nothing about this one's hardware.
    apart = {(XL, "cuda"): Speed(3.0, 50), (REF, "cpu"): Speed(1.0, 50)}
    assert calibrated_factor(XL, apart, min_samples=20, clamp=4.0) == 2.0


def test_enough_samples_move_the_factor_to_the_observed_ratio() -> None:
    observed = {(XL, "cuda"): Speed(3.0, 20), (REF, "cuda"): Speed(1.0, 20),
                (XL, "cpu"): Speed(40.0, 20), (REF, "cpu"): Speed(10.0, 20)}
    # cuda says 3, cpu says 4: the mean over the classes.
    assert calibrated_factor(XL, observed, min_samples=20, clamp=4.0) == pytest.approx(3.5)


def test_the_factor_is_clamped_around_the_fixed_one() -> None:
    liar_slow = {(XL, "cuda"): Speed(1000.0, 100), (REF, "cuda"): Speed(1.0, 100)}
    liar_fast = {(XL, "cuda"): Speed(0.001, 100), (REF, "cuda"): Speed(1.0, 100)}
    assert calibrated_factor(XL, liar_slow, min_samples=20, clamp=4.0) == pytest.approx(8.0)
    assert calibrated_factor(XL, liar_fast, min_samples=20, clamp=4.0) == pytest.approx(0.5)


def test_request_cost_follows_the_calibrated_factor() -> None:
    request = GenerationRequest(width=512, height=512, steps=20, batch_size=2)
    observed = {(XL, "cuda"): Speed(3.0, 20), (REF, "cuda"): Speed(1.0, 20)}
    factor = calibrated_factors(observed, min_samples=20, clamp=4.0)
    assert request_cost(request, XL) == pytest.approx(4.0)
    assert request_cost(request, XL, factor) == pytest.approx(6.0)
    assert base_units(request, XL) == pytest.approx(2.0)


def test_refiner_jobs_have_no_single_model_base_units() -> None:
    request = GenerationRequest(width=512, height=512, steps=20, refiner_checkpoint="refiner-xl")
    assert base_units(request, XL) is None
