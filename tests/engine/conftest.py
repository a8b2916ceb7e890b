"""Engine-breadth fixtures: a data dir with a tiny model of every family as a diffusers
folder, a LoRA folder and an embeddings folder, and an engine over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kakumei.engine.tiny import TINY_FAMILIES


@pytest.fixture(scope="session")
def breadth_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kakumei.engine.devices import quiet_libraries
    from kakumei.engine.tiny import build_tiny_pipeline, ensure_tiny_model

    quiet_libraries()
    home = tmp_path_factory.mktemp("kakumei-breadth")
    models = home / "models"
    ensure_tiny_model(models)
    for family in TINY_FAMILIES:
        build_tiny_pipeline(family).save_pretrained(models / f"tiny-{family}", safe_serialization=True)
    sharp_vae_model().save_pretrained(models / "tiny-sd1-sharp-vae", safe_serialization=True)
    (models / "lora").mkdir()
    (models / "embeddings").mkdir()
    return home


@pytest.fixture(scope="session")
def breadth_engine(breadth_home: Path):
    from kakumei.config import load_settings
    from kakumei.engine.pipeline import Engine

    settings = load_settings(
        {"model": "kakumei:tiny", "device": "cpu"}, environ={"KAKUMEI_HOME": str(breadth_home), "HF_HUB_OFFLINE": "1"}
    )
    return Engine(settings, cache_size=6)


def sharp_vae_model():
    """The tiny SD1 model with a VAE that encodes without sampling noise and at unit scale.

    The random tiny VAE's latent noise is larger than its signal, so nothing could stay close
    to an input through it; trained VAEs are nearly deterministic and scaled to unit variance,
    which is what this imitates for the img2img measurements.
    """
    import torch

    from kakumei.engine.tiny import build_tiny_pipeline
    from breadth_helpers import gradient_image

    pipe = build_tiny_pipeline("sd1")
    quant = pipe.vae.quant_conv
    half = quant.out_channels // 2
    with torch.no_grad():
        quant.weight[half:] = 0
        quant.bias[half:] = -30.0  # log-variance: the latent distribution collapses to its mean
        x = torch.from_numpy(np.asarray(gradient_image(), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        std = float(pipe.vae.encode(x).latent_dist.mean.std())
    pipe.vae.register_to_config(scaling_factor=1.0 / std)
    return pipe
