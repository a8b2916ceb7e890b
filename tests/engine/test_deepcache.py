"""DeepCache (setting deepcache_interval): off leaves the exact image, on changes it
deterministically and skips the deep blocks, bad intervals are refused."""

from __future__ import annotations

import pytest
import torch

from kakumei.engine.deepcache import deep_cache
from kakumei.engine.tiny import build_tiny_components
from kakumei.schemas import GenerationRequest

REQ = GenerationRequest(prompt="a red fox in snow", steps=4, width=64, height=64, seed=11)


@pytest.fixture(scope="module")
def cached_engine(tiny_settings):
    from kakumei.engine.pipeline import Engine

    return Engine(tiny_settings.model_copy(update={"deepcache_interval": 3}))


def _unet_inputs(unet: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=g)
    context = torch.randn(2, 4, unet.config.cross_attention_dim, generator=g)
    return sample, torch.tensor(500), context


def test_off_by_default_and_the_engine_image_is_unchanged(engine, cached_engine, tiny_settings) -> None:
    from kakumei.engine.pipeline import Engine

    assert tiny_settings.deepcache_interval == 0
    exact = engine.generate(REQ).images[0]
    assert "deepcache_interval" not in exact.metadata
    # an engine that used DeepCache leaves its UNet as it found it
    cached_engine.generate(REQ)
    unet = cached_engine.load().pipe.unet
    assert "forward" not in vars(unet) and all("forward" not in vars(b) for b in unet.up_blocks)
    assert Engine(tiny_settings.model_copy(update={"deepcache_interval": 0})).generate(REQ).images[0].png == exact.png


def test_on_changes_the_image_deterministically(engine, cached_engine) -> None:
    exact = engine.generate(REQ).images[0]
    a, b = cached_engine.generate(REQ).images[0], cached_engine.generate(REQ).images[0]
    assert a.png == b.png
    assert a.image.tobytes() != exact.image.tobytes()
    assert a.metadata["deepcache_interval"] == 3


def test_deep_blocks_run_once_per_interval_and_shallow_ones_every_call() -> None:
    unet = build_tiny_components()["unet"].eval()
    runs = {"mid": 0, "first_down": 0, "last_up": 0}
    # hooks on a module inside each block: they fire only where the block really runs
    for name, block in (("mid", unet.mid_block), ("first_down", unet.down_blocks[0]), ("last_up", unet.up_blocks[-1])):
        block.resnets[0].register_forward_hook(lambda *_, name=name: runs.__setitem__(name, runs[name] + 1))
    sample, t, context = _unet_inputs(unet)
    with torch.no_grad(), deep_cache(unet, 3):
        for _ in range(7):
            unet(sample, t, encoder_hidden_states=context)
    assert runs == {"mid": 3, "first_down": 7, "last_up": 7}  # calls 0, 3, 6 run the whole UNet


def test_a_cached_call_on_the_same_input_gives_the_full_output() -> None:
    """With the deep features of the very same input, the shallow path must rebuild the full
    UNet's output: the last up block gets its real skip connections and the cached features."""
    unet = build_tiny_components()["unet"].eval()
    sample, t, context = _unet_inputs(unet)
    with torch.no_grad():
        full = unet(sample, t, encoder_hidden_states=context).sample
        with deep_cache(unet, 2):
            first = unet(sample, t, encoder_hidden_states=context).sample
            reused = unet(sample, t, encoder_hidden_states=context).sample
            other = unet(sample * 0.5, t, encoder_hidden_states=context).sample  # a full call again
    torch.testing.assert_close(first, full)
    torch.testing.assert_close(reused, full)
    assert not torch.allclose(other, full)


@pytest.mark.parametrize("value, message", [(1, "use 0 for off"), (-1, "0 (off) or 2 to 10"), (11, "0 (off) or 2 to 10")])
def test_bad_intervals_are_refused(kakumei_home, value, message) -> None:
    from kakumei.config import load_settings
    from kakumei.errors import ConfigError

    with pytest.raises(ConfigError, match="deepcache_interval") as exc:
        load_settings({"deepcache_interval": value}, environ={"KAKUMEI_HOME": str(kakumei_home)})
    assert message in str(exc.value)
    with pytest.raises(ConfigError, match="deepcache_interval"):
        load_settings(environ={"KAKUMEI_HOME": str(kakumei_home), "KAKUMEI_DEEPCACHE_INTERVAL": "often"})
