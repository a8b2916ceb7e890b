"""Pixel work around img2img and inpainting, as AUTOMATIC1111 does it: resize modes, mask
blur and invert, "masked content" fills, pasting the result back over the original."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

_LANCZOS = Image.Resampling.LANCZOS


def resize_image(mode: int, im: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's resize_image: 0 just resize, 1 crop and resize, 2 resize and fill
    (3, latent upscale, resizes like 0 here; the engine upscales the latents instead)."""
    if mode in (0, 3) or im.size == (width, height):
        return im.resize((width, height), resample=_LANCZOS)
    ratio = width / height
    src_ratio = im.width / im.height
    if mode == 1:  # crop: scale to cover, centre, cut the overflow
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
    else:  # fill: scale to fit, centre, stretch the edge rows/columns into the gaps
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = im.resize((src_w, src_h), resample=_LANCZOS)
    res = Image.new(im.mode, (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2:
        if ratio < src_ratio:
            fill = height // 2 - src_h // 2
            if fill > 0:
                res.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
                res.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
        elif ratio > src_ratio:
            fill = width // 2 - src_w // 2
            if fill > 0:
                res.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
                res.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
    return res


def prepare_mask(mask: Image.Image, blur: int, invert: bool) -> Image.Image:
    """Greyscale mask, white = repaint; inverted and blurred as asked."""
    m = mask.convert("L") if mask.mode != "RGBA" else mask.getchannel("A")
    if invert:
        m = ImageOps.invert(m)
    if blur > 0:
        m = m.filter(ImageFilter.GaussianBlur(blur))
    return m


def fill_masked(image: Image.Image, mask: Image.Image, fill: int, seed: int) -> Image.Image:
    """A1111's "masked content" before denoising: 1 (original) keeps the pixels;
    0 (fill) puts the surrounding colours in; 2 (latent noise) and 3 (latent nothing) are
    done here in pixel space, as seeded noise and as flat grey."""
    if fill == 1:
        return image
    rgb = image.convert("RGB")
    if fill == 0:
        filler = rgb.filter(ImageFilter.GaussianBlur(max(rgb.size) // 8 or 1))
    elif fill == 2:
        noise = np.random.default_rng(seed).integers(0, 256, (rgb.height, rgb.width, 3), dtype=np.uint8)
        filler = Image.fromarray(noise, "RGB")
    else:
        filler = Image.new("RGB", rgb.size, (127, 127, 127))
    hard = mask.point(lambda v: 255 if v > 0 else 0)
    return Image.composite(filler, rgb, hard)


def paste_over(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Keep the original where the mask is black: the VAE round trip would otherwise shift
    colours in the part the user did not ask to change."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask.convert("L"))


def pixel_distance(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel, 0..255 (used by tests and benchmarks)."""
    x = np.asarray(a.convert("RGB"), dtype=np.float32)
    y = np.asarray(b.convert("RGB").resize(a.size), dtype=np.float32)
    return float(np.abs(x - y).mean())
