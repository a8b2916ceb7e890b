"""What a run imports: the CLI's generate path leaves out what it does not use."""

from __future__ import annotations

import subprocess
import sys

_PROBE = r"""
import sys
from kakumei.engine.pipeline import Engine
from kakumei.engine.samplers import make_scheduler
make_scheduler("Euler", "Automatic", {"num_train_timesteps": 1000})
print("before:", sorted(m for m in ("scipy.sparse", "scipy.special", "scipy.linalg") if m in sys.modules))
scheduler = make_scheduler("Euler", "Beta", {"num_train_timesteps": 1000})
scheduler.set_timesteps(4)
print("beta:", type(sys.modules["scipy.stats"]).__name__, round(float(scheduler.sigmas[1]), 2))
"""


def test_scipy_waits_for_the_schedules_that_use_it() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120).stdout
    assert "before: []" in out
    # the "Beta" schedule gets the real scipy.stats (the stand-in gave way to it)
    assert "beta: module 114.06" in out


_MODELS_PROBE = r"""
import sys, tempfile
from pathlib import Path
from kakumei.config import load_settings
from kakumei.engine.pipeline import Engine
from kakumei.schemas import GenerationRequest
home = tempfile.mkdtemp()
settings = load_settings({"model": "kakumei:tiny", "device": "cpu"}, environ={"KAKUMEI_HOME": home, "HF_HUB_OFFLINE": "1"})
Engine(settings).generate(GenerationRequest(prompt="a fox", steps=1, width=64, height=64, seed=1))
other = [m for m in ("diffusers.models.transformers.transformer_flux", "diffusers.models.unets.unet_1d",
                     "diffusers.models.autoencoders.autoencoder_kl_wan") if m in sys.modules]
print("unused models imported:", other)
import diffusers
from diffusers.models.transformers import FluxTransformer2DModel
print("later:", FluxTransformer2DModel.__name__, diffusers.UNet1DModel.__name__,
      type(sys.modules["diffusers.models.unets"]).__name__)
"""


def test_a_run_imports_only_the_models_it_loads() -> None:
    """diffusers' model packages import every model they export; a run imports the UNet,
    VAE and transformer blocks it builds, and every other model still imports when asked."""
    out = subprocess.run([sys.executable, "-c", _MODELS_PROBE], capture_output=True, text=True, check=True, timeout=300).stdout
    assert "unused models imported: []" in out
    assert "later: FluxTransformer2DModel UNet1DModel DeferredPackage" in out
