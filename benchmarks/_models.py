"""Full-size model architectures with random weights, for benchmarks: speed does not depend
on weight values. Built once into a cache folder and loaded like any user model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def bench_cache() -> Path:
    root = Path(os.environ.get("KAKUMEI_BENCH_CACHE", Path(tempfile.gettempdir()) / "kakumei-bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def sd15_random(seed: int = 0) -> Path:
    """A diffusers folder with the Stable Diffusion 1.5 architecture and random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from kakumei.engine.tiny import TOKENIZER_DIR

    folder = bench_cache() / "sd15-random"
    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                       projection_dim=768, vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                       pad_token_id=49407, hidden_act="quick_gelu")
    )
    # Random init gives activations far larger than trained weights; scale the UNet's output
    # layer down so that sampling stays in a realistic range instead of overflowing.
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.05)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    tmp = Path(tempfile.mkdtemp(dir=bench_cache()))
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder


def psnr(a, b) -> float:
    import numpy as np

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def sdxl_random(seed: int = 0) -> Path:
    """A diffusers folder with the SDXL base architecture (kakumei's bundled single-file
    config) and random weights, saved in float16 (5 GB instead of 10)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from kakumei.engine.single_file import bundled_config
    from kakumei.engine.tiny import clip_tokenizer

    folder = bench_cache() / "sdxl-random"
    if (folder / "model_index.json").is_file():
        return folder
    parts = bundled_config("sdxl")["parts"]
    torch.manual_seed(seed)

    def config_of(part: str) -> dict:
        return {k: v for k, v in parts[part].items() if not k.startswith("_") and k != "architectures"}

    unet = UNet2DConditionModel.from_config(config_of("unet"))
    vae = AutoencoderKL.from_config(config_of("vae"))
    te = CLIPTextModel(CLIPTextConfig(**config_of("text_encoder")))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**config_of("text_encoder_2")))
    with torch.no_grad():  # as in sd15_random: keep random sampling in a realistic range
        unet.conv_out.weight.mul_(0.05)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(open_clip=True),
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(parts["scheduler"]), force_zeros_for_empty_prompt=False,
    ).to(torch.float16)
    tmp = Path(tempfile.mkdtemp(dir=bench_cache()))
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder
