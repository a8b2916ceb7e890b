"""img2img, inpainting and hires fix on the tiny model: measured, not eyeballed."""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from kakumei.engine.imageops import pixel_distance, resize_image
from kakumei.schemas import validate_request
from kakumei.errors import InvalidRequest
from kakumei.images import encode_image_b64
from kakumei.schemas import GenerationRequest

from breadth_helpers import family_ref, gradient_image, png_pixels

BASE = {"prompt": "a red fox in snow", "steps": 20, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}


def vae_round_trip(engine, ref: str, image: Image.Image) -> Image.Image:
    """The input as the model sees it: the random tiny VAE does not reconstruct pictures, so
    'close to the input' is measured against its own encode/decode of the input."""
    pipe = engine.load(ref).pipe
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        x = x.to(pipe.vae.dtype)
        decoded = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample.float()
    arr = ((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    return Image.fromarray(arr, "RGB")


def test_img2img_low_strength_stays_close_high_strength_departs(breadth_engine, breadth_home) -> None:
    ref = family_ref(breadth_home, "sd1-sharp-vae")
    source = gradient_image()
    reference = vae_round_trip(breadth_engine, ref, source)
    b64 = encode_image_b64(source)
    low = breadth_engine.generate(GenerationRequest(**BASE, model=ref, init_images=[b64], denoising_strength=0.1)).images[0]
    high = breadth_engine.generate(GenerationRequest(**BASE, model=ref, init_images=[b64], denoising_strength=1.0)).images[0]
    d_low, d_high = pixel_distance(reference, low.image), pixel_distance(reference, high.image)
    print(f"img2img distance to the input's VAE round trip: strength 0.1 -> {d_low:.1f}, 1.0 -> {d_high:.1f}")
    # Measured on this tiny model: about 16 at 0.1 and 34 at 1.0 (of 255).
    assert d_high > 2 * d_low
    assert "Denoising strength: 0.1," in low.infotext


def test_img2img_is_deterministic_and_records_the_input_by_hash(engine) -> None:
    req = GenerationRequest(**BASE, init_images=[encode_image_b64(gradient_image())], denoising_strength=0.5)
    a, b = engine.generate(req).images[0], engine.generate(req).images[0]
    assert a.png == b.png
    assert "init_images" not in a.metadata["request"]
    assert len(a.metadata["inputs"]["init_images_sha256"][0]) == 64
    assert len(a.png) < 50_000


def test_inpainting_keeps_the_unmasked_part(engine) -> None:
    source = gradient_image()
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    req = GenerationRequest(
        **BASE, init_images=[encode_image_b64(source)], mask=encode_image_b64(mask), mask_blur=0, denoising_strength=1.0
    )
    out = png_pixels(engine.generate(req).images[0].png)
    src = np.asarray(source, dtype=np.float32)
    assert np.abs(out[:16] - src[:16]).max() == 0  # outside the mask: untouched
    assert np.abs(out[20:44, 20:44] - src[20:44, 20:44]).mean() > 20  # inside: repainted


def test_inpainting_mask_invert_swaps_the_parts(engine) -> None:
    source = gradient_image()
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    req = GenerationRequest(
        **BASE, init_images=[encode_image_b64(source)], mask=encode_image_b64(mask), mask_blur=0,
        inpainting_mask_invert=1,
    )
    out = png_pixels(engine.generate(req).images[0].png)
    src = np.asarray(source, dtype=np.float32)
    assert np.abs(out[20:44, 20:44] - src[20:44, 20:44]).max() == 0


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
@pytest.mark.parametrize("only_masked", [False, True])
def test_inpainting_fills_and_only_masked_run(engine, fill: int, only_masked: bool) -> None:
    mask = Image.new("L", (64, 64))
    mask.paste(255, (24, 24, 40, 40))
    req = GenerationRequest(
        **{**BASE, "steps": 4}, init_images=[encode_image_b64(gradient_image())], mask=encode_image_b64(mask),
        inpainting_fill=fill, inpaint_full_res=only_masked, denoising_strength=0.75,
    )
    image = engine.generate(req).images[0]
    assert image.image.size == (64, 64)
    assert "Mask blur: 4" in image.infotext
    assert ("Inpaint area: Only masked" in image.infotext) == only_masked


def test_inpainting_checkpoint_runs_and_refuses_text_to_image(breadth_engine, breadth_home) -> None:
    ref = family_ref(breadth_home, "sd1-inpaint")
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    req = GenerationRequest(
        **{**BASE, "steps": 4}, model=ref, init_images=[encode_image_b64(gradient_image())], mask=encode_image_b64(mask)
    )
    assert breadth_engine.generate(req).images[0].metadata["model"]["architecture"] == "sd1-inpaint"
    with pytest.raises(InvalidRequest, match="inpainting model"):
        breadth_engine.generate(GenerationRequest(**{**BASE, "steps": 2}, model=ref))


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Lanczos"])
def test_hires_fix_upscales_and_records_it(engine, upscaler: str) -> None:
    req = GenerationRequest(**{**BASE, "steps": 4}, enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler, denoising_strength=0.5)
    image = engine.generate(req).images[0]
    assert image.image.size == (96, 96)
    assert f"Hires upscaler: {upscaler}" in image.infotext
    assert "Hires upscale: 1.5" in image.infotext


@pytest.mark.parametrize(
    ("mode", "size"),
    [(0, (64, 32)), (1, (64, 32)), (2, (64, 32))],
)
def test_resize_modes_give_the_requested_size(mode: int, size: tuple[int, int]) -> None:
    out = resize_image(mode, gradient_image(), *size)
    assert out.size == size


def test_crop_and_fill_differ_as_a1111_describes() -> None:
    square = gradient_image()
    crop = np.asarray(resize_image(1, square, 64, 32), dtype=np.float32)
    fill = np.asarray(resize_image(2, square, 64, 32), dtype=np.float32)
    # crop keeps the centre rows of the square at full width; fill shrinks the whole square
    assert np.allclose(crop[:, 32], np.asarray(square, dtype=np.float32)[16:48, 32], atol=12)
    assert not np.allclose(crop, fill, atol=12)


# --- bad input ----------------------------------------------------------------------------


def _bomb_png() -> str:
    """A valid PNG header that declares a 30000 x 30000 canvas, a few hundred bytes long."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def _truncated_png() -> str:
    buf = io.BytesIO()
    gradient_image().save(buf, "PNG")
    return base64.b64encode(buf.getvalue()[:200]).decode()


MASK_32 = None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"init_images": ["not base64!"]}, "not base64"),
        ({"init_images": [base64.b64encode(b"hello, not an image").decode()]}, "not an image"),
        ({"init_images": [_truncated_png()]}, "truncated"),
        ({"init_images": [_bomb_png()]}, "decompression bomb"),
        ({"init_images": [encode_image_b64(Image.new("L", (5000, 5000)))]}, "5000x5000 pixels; at most"),
        ({"mask": "x"}, "mask"),
        ({"resize_mode": 9}, "resize_mode must be one of 0 \\(Just resize\\)"),
        ({"inpainting_fill": 5}, "inpainting_fill must be one of"),
        ({"hr_upscaler": "ESRGAN_9x"}, "unknown hires upscaler"),
        ({"enable_hr": True, "hr_scale": 4.0, "width": 1024}, "at most 2048"),
        ({"denoising_strength": 1.5}, "denoising_strength"),
    ],
)
def test_bad_image_inputs_get_clear_messages(fields: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        validate_request({**BASE, **fields})


def test_mask_of_another_size_is_refused() -> None:
    image = encode_image_b64(gradient_image(64))
    mask = encode_image_b64(Image.new("L", (32, 32)))
    with pytest.raises(InvalidRequest, match="the mask is 32x32 but init_images\\[0\\] is 64x64"):
        validate_request({**BASE, "init_images": [image], "mask": mask})


def test_too_few_steps_for_the_strength_is_explained(engine) -> None:
    req = GenerationRequest(**{**BASE, "steps": 4}, init_images=[encode_image_b64(gradient_image())], denoising_strength=0.1)
    with pytest.raises(InvalidRequest, match="raise steps to 10 or more"):
        engine.generate(req)
