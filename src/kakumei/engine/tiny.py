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


# The UNet every tiny family shares: two blocks, the second with cross-attention.
TINY_UNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}


def build_tiny_components(seed: int = 0, cross_attention_dim: int = 32) -> dict:
    """The components of the tiny pipeline, deterministic for a given seed."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET, cross_attention_dim=cross_attention_dim, attention_head_dim=8)
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
    text_encoder = _tiny_text_encoder(seed + 2, cross_attention_dim, with_projection=False, pad_token_id=49407)
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


# Tiny variants of the other families, for tests of every architecture path. Same recipe idea:
# seeded random weights, real tokenizers, a few hundred kilobytes.
TINY_FAMILIES = ("sd1", "sd1-inpaint", "sd2-v", "sdxl", "sdxl-refiner")


def clip_tokenizer(open_clip: bool = False) -> object:
    """The CLIP BPE tokenizer; OpenCLIP's variant (SD 2, SDXL's second encoder) pads with "!"."""
    from transformers import CLIPTokenizer

    if not open_clip:
        return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")


def _tiny_text_encoder(
    seed: int, hidden: int, with_projection: bool, act: str = "quick_gelu", pad_token_id: int = 1
) -> object:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act=act,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def build_tiny_pipeline(family: str = "sd1", seed: int = 0) -> object:
    """A tiny pipeline of one family (see TINY_FAMILIES), deterministic for a given seed."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; known: {', '.join(TINY_FAMILIES)}")
    parts = build_tiny_components(seed)
    if family == "sd1":
        return StableDiffusionPipeline(**parts, requires_safety_checker=False)
    if family == "sd1-inpaint":
        torch.manual_seed(seed)
        parts["unet"] = UNet2DConditionModel.from_config({**parts["unet"].config, "in_channels": 9})
        return StableDiffusionInpaintPipeline(**parts, requires_safety_checker=False)
    if family == "sd2-v":
        parts["tokenizer"] = clip_tokenizer(open_clip=True)
        parts["text_encoder"] = _tiny_text_encoder(seed + 2, 32, False, act="gelu")
        parts["scheduler"] = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            prediction_type="v_prediction",
        )
        return StableDiffusionPipeline(**parts, requires_safety_checker=False)
    # SDXL: UNet with added time/text conditioning, two text encoders (16 + 32 wide).
    refiner = family == "sdxl-refiner"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=(32 + 5 * 8) if refiner else (32 + 6 * 8),
        cross_attention_dim=32 if refiner else 16 + 32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1,
        timestep_spacing="leading",
    )
    te2 = _tiny_text_encoder(seed + 3, 32, True, act="gelu")
    tok2 = clip_tokenizer(open_clip=True)
    if refiner:
        return StableDiffusionXLImg2ImgPipeline(
            vae=parts["vae"], text_encoder=None, text_encoder_2=te2, tokenizer=None, tokenizer_2=tok2,
            unet=unet, scheduler=scheduler, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        )
    return StableDiffusionXLPipeline(
        vae=parts["vae"], text_encoder=_tiny_text_encoder(seed + 2, 16, False), text_encoder_2=te2,
        tokenizer=parts["tokenizer"], tokenizer_2=tok2, unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=False,
    )


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
