"""Cheap previews: latents -> small RGB by a fixed linear map, no VAE decode.

The factors are the widely used SD 1.x/2.x approximation (A1111's "Approx cheap"); they are
meaningless for the tiny random model, whose previews are noise like its images.
"""

from __future__ import annotations

import torch
from PIL import Image

_SD1_FACTORS = torch.tensor(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]
)


def latents_to_preview(latent: torch.Tensor) -> Image.Image:
    """latent: (4, h, w) -> an RGB image of w x h pixels."""
    lat = latent.detach().float().cpu()
    if lat.shape[0] != 4:
        lat = lat[:4] if lat.shape[0] > 4 else torch.cat([lat, torch.zeros(4 - lat.shape[0], *lat.shape[1:])])
    rgb = torch.einsum("chw,cr->rhw", lat, _SD1_FACTORS)
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(rgb, mode="RGB")
