"""Engine.generate on the tiny model: determinism, seeds, samplers, cancel."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kakumei.errors import GenerationCancelled, InvalidRequest, ModelNotFound
from kakumei.schemas import SAMPLER_NAMES, SAMPLERS, GenerationRequest


def small(**kw) -> GenerationRequest:
    base = {"prompt": "a red fox in snow", "steps": 2, "width": 64, "height": 64, "seed": 42}
    return GenerationRequest(**{**base, **kw})


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_same_seed_gives_same_bytes(engine) -> None:
    a = engine.generate(small()).images[0].png
    b = engine.generate(small()).images[0].png
    assert a == b


def test_different_seeds_differ(engine) -> None:
    a = engine.generate(small(seed=1)).images[0]
    b = engine.generate(small(seed=2)).images[0]
    assert np.abs(pixels(a.png) - pixels(b.png)).mean() > 1.0


def test_batch_and_iterations_use_consecutive_seeds(engine) -> None:
    result = engine.generate(small(seed=100, batch_size=2, n_iter=2))
    assert [im.seed for im in result.images] == [100, 101, 102, 103]
    assert [im.index for im in result.images] == [0, 1, 2, 3]
    assert len({im.png for im in result.images}) == 4
    for im in result.images:
        assert im.image.size == (64, 64)


def test_image_depends_only_on_its_own_seed(engine) -> None:
    """The noise of image i is drawn from seed + i alone, so the second batch of a run equals
    a run that starts at that seed (the PNG metadata differs, the pixels may not)."""
    two_batches = engine.generate(small(seed=7, batch_size=1, n_iter=2)).images
    alone = engine.generate(small(seed=8)).images[0]
    assert np.array_equal(pixels(two_batches[1].png), pixels(alone.png))


def test_random_seed_is_recorded(engine) -> None:
    result = engine.generate(small(seed=-1))
    assert 0 <= result.seed < 2**32
    assert result.request.seed == result.seed
    assert result.images[0].metadata["seed"] == result.seed
    assert f"Seed: {result.seed}," in result.images[0].infotext
    again = engine.generate(small(seed=result.seed)).images[0]
    assert again.png == result.images[0].png


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs_and_is_deterministic(engine, sampler: str) -> None:
    req = small(sampler_name=sampler, steps=3)
    a = engine.generate(req).images[0]
    b = engine.generate(req).images[0]
    assert a.png == b.png, f"{sampler} is not deterministic"
    assert f"Sampler: {sampler}," in a.infotext
    assert not np.isnan(pixels(a.png)).any()


@pytest.mark.parametrize("schedule", ["Karras", "Exponential", "SGM Uniform", "Beta", "Uniform"])
@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DPM++ 2M SDE"])
def test_schedules_apply(engine, sampler: str, schedule: str) -> None:
    assert SAMPLERS[sampler]
    image = engine.generate(small(sampler_name=sampler, scheduler=schedule, steps=3)).images[0]
    assert f"Schedule type: {schedule}," in image.infotext


def test_schedule_changes_the_image(engine) -> None:
    auto = engine.generate(small(sampler_name="DPM++ 2M", steps=4)).images[0]
    karras = engine.generate(small(sampler_name="DPM++ 2M", scheduler="Karras", steps=4)).images[0]
    assert np.abs(pixels(auto.png) - pixels(karras.png)).mean() > 0.1


def test_clip_skip_changes_the_image(engine) -> None:
    one = engine.generate(small(clip_skip=1)).images[0]
    two = engine.generate(small(clip_skip=2)).images[0]
    assert not np.array_equal(pixels(one.png), pixels(two.png))
    assert "Clip skip: 2" in two.infotext and "Clip skip" not in one.infotext


def test_progress_reports_every_step(engine) -> None:
    seen = []
    engine.generate(small(steps=3, n_iter=2), on_step=lambda p: seen.append((p.image_offset, p.step, p.total)))
    assert seen == [(0, 1, 3), (0, 2, 3), (0, 3, 3), (1, 1, 3), (1, 2, 3), (1, 3, 3)]


def test_preview_is_a_small_image(engine) -> None:
    previews = []
    engine.generate(small(steps=2), on_step=lambda p: previews.append(p.preview()))
    assert previews and all(isinstance(p, Image.Image) for p in previews)
    assert previews[-1].size == (8, 8)  # latent resolution: 64 / 8


def test_cancel_keeps_finished_images(engine) -> None:
    steps_seen = []

    def cancelled() -> bool:
        # cancel during the second batch
        return len(steps_seen) > 3

    with pytest.raises(GenerationCancelled) as info:
        engine.generate(small(steps=3, n_iter=3), on_step=lambda p: steps_seen.append(p), cancelled=cancelled)
    assert len(info.value.images) == 1
    assert info.value.images[0].seed == 42
    assert len(steps_seen) == 4  # stopped at the next step, not at the end of the batch


def test_only_batch_regenerates_exactly(engine) -> None:
    full = engine.generate(small(seed=5, batch_size=2, n_iter=2)).images
    second = engine.generate(small(seed=5, batch_size=2, n_iter=2), only_batch=1).images
    assert [im.png for im in second] == [im.png for im in full[2:]]
    with pytest.raises(InvalidRequest):
        engine.generate(small(n_iter=2), only_batch=2)


def test_unknown_model_path(engine, tmp_path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        engine.generate(small(model=str(tmp_path / "nope")))


def test_hub_model_offline_says_what_to_do(engine) -> None:
    with pytest.raises(ModelNotFound, match="offline"):
        engine.generate(small(model="someone/not-cached-model"))
