"""The seeded tiny random-weight Stable Diffusion 1.x pipeline (`kakumei:tiny`).

Same architecture family as SD 1.5 (UNet with cross-attention, KL VAE with 8x downscale,
CLIP text encoder with the real CLIP tokenizer), a few hundred kilobytes of random weights
each. Its output is noise; it exists so tests and demos run in well under a second on a CPU.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_REF = "kakumei:tiny"
TINY_NAME = "kakumei-tiny"
# Bump when the recipe below changes, so stale copies in data dirs are rebuilt.
TINY_RECIPE_VERSION = "1"
TOKENIZER_DIR = Path(__file__).parent / "configs" / "clip_tokenizer"


def build_tiny_components(seed: int = 0, cross_attention_dim: int = 32) -> dict:
    """The components of the tiny pipeline, deterministic for a given seed."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_size=cross_attention_dim,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=cross_attention_dim,
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def ensure_tiny_model(models_dir: Path) -> Path:
    """Build the tiny pipeline into `models_dir/kakumei-tiny` once; return the folder."""
    from diffusers import StableDiffusionPipeline

    target = models_dir / TINY_NAME
    marker = target / ".kakumei-tiny-recipe"
    if marker.is_file() and marker.read_text().strip() == TINY_RECIPE_VERSION:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent or interrupted build never leaves
    # a half-written model behind.
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=models_dir))
    try:
        pipe = StableDiffusionPipeline(**build_tiny_components(), requires_safety_checker=False)
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / ".kakumei-tiny-recipe").write_text(TINY_RECIPE_VERSION)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not marker.is_file():  # another process won the race only if it finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
