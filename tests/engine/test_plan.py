"""A batch plan: one entry per image, in batch order, for a single request's batch and for a
batch shared by several requests alike."""

from __future__ import annotations

import pytest
import torch

from kakumei.engine.batching import PerImageScale
from kakumei.engine.plan import BatchPlan, GenerationExtras, Inputs, PreparedRequest, build_plan
from kakumei.engine.prompts import EncodedPrompt
from kakumei.schemas import GenerationRequest

MODEL = object()  # build_plan only compares models, it never runs one


def member(seed: int, batch_size: int = 1, cfg: float = 7.0, fill: float = 0.0, **kw) -> PreparedRequest:
    request = GenerationRequest(prompt="p", seed=seed, batch_size=batch_size, cfg_scale=cfg, **kw)
    enc = EncodedPrompt(torch.full((1, 77, 4), fill), None)
    extras = GenerationExtras(loras=[], embeddings=[], refiner=None, inputs=Inputs())
    return PreparedRequest(request, None, MODEL, enc, enc, None, extras)  # type: ignore[arg-type]


def test_a_single_requests_batch() -> None:
    plan = build_plan([member(seed=10, batch_size=3, n_iter=2)], batch=1)
    assert isinstance(plan, BatchPlan)
    assert plan.seeds == [13, 14, 15] and plan.indices == [3, 4, 5] and plan.owners == [0, 0, 0]
    assert plan.offset == 3 and plan.guidance == 7.0
    assert plan.cond.embeds.shape == (3, 77, 4)


def test_a_shared_batch_keeps_each_requests_seeds_scales_and_prompts() -> None:
    plan = build_plan([member(5, cfg=4.0, fill=1.0), member(9, batch_size=2, cfg=8.0, fill=2.0)], batch=0)
    assert plan.seeds == [5, 9, 10] and plan.indices == [0, 0, 1] and plan.owners == [0, 1, 1]
    assert isinstance(plan.guidance, PerImageScale) and plan.guidance.scales == [4.0, 8.0, 8.0]
    assert [row.unique().item() for row in plan.cond.embeds] == [1.0, 2.0, 2.0]


def test_a_shared_batch_refuses_what_belongs_to_one_request() -> None:
    with_inputs = member(2)
    with_inputs.extras.inputs.images.append(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share a batch"):
        build_plan([member(1), with_inputs], batch=0)
