"""PNG metadata: A1111 infotext and kakumei JSON, written and read back."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from kakumei.engine.metadata import (
    build_infotext,
    parse_infotext,
    read_metadata,
    request_from_infotext,
)
from kakumei.errors import MetadataNotFound
from kakumei.schemas import GenerationRequest


def test_infotext_matches_a1111_layout() -> None:
    req = GenerationRequest(prompt="a fox", negative_prompt="blurry", steps=20, cfg_scale=7.0, seed=5,
                            sampler_name="DPM++ 2M", scheduler="Karras", clip_skip=2)
    text = build_infotext(req, 5, "v1-5-pruned", "6ce0161689", "kakumei 0.1.0")
    assert text == (
        "a fox\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned, Clip skip: 2, Version: kakumei 0.1.0"
    )


def test_parse_a1111_infotext() -> None:
    # as written by AUTOMATIC1111 v1.10, with a quoted value and a multi-line prompt
    text = (
        "masterpiece, (a red fox:1.2)\nin snow\nNegative prompt: lowres, bad hands\n"
        'Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 1234, Size: 512x768, '
        'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "fox: 0123456789ab, snow: ba9876543210", '
        "Version: v1.10.1"
    )
    fields = parse_infotext(text)
    assert fields["prompt"] == "masterpiece, (a red fox:1.2)\nin snow"
    assert fields["negative_prompt"] == "lowres, bad hands"
    assert fields["Lora hashes"] == "fox: 0123456789ab, snow: ba9876543210"
    req = request_from_infotext(fields)
    assert (req.steps, req.cfg_scale, req.seed, req.width, req.height) == (28, 6.5, 1234, 512, 768)
    assert req.sampler_name == "Euler a"


def test_parse_legacy_sampler_name_splits_schedule() -> None:
    fields = parse_infotext("x\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512")
    req = request_from_infotext(fields)
    assert (req.sampler_name, req.scheduler) == ("DPM++ 2M", "Karras")


def test_png_carries_both_chunks(engine) -> None:
    image = engine.generate(GenerationRequest(prompt="ünïcödé fox", steps=2, width=64, height=64, seed=3)).images[0]
    meta = read_metadata(image.png)
    assert meta.parameters == image.infotext
    assert meta.kakumei["request"]["prompt"] == "ünïcödé fox"
    assert meta.kakumei["request"]["seed"] == 3
    assert len(meta.kakumei["model"]["sha256"]) == 64
    assert meta.kakumei["model"]["sha256"][:10] in meta.parameters  # Model hash = sha256[:10]
    assert {"kakumei", "torch", "diffusers", "transformers"} <= set(meta.kakumei["software"])


def test_round_trip_regenerates_same_bytes(engine) -> None:
    images = engine.generate(GenerationRequest(prompt="fox", steps=2, width=64, height=64, seed=9, batch_size=2, n_iter=2)).images
    for original in images:
        request, index = read_metadata(original.png).request_and_index()
        again = engine.generate(request, only_batch=index // request.batch_size).images
        assert [im.png for im in again if im.index == index] == [original.png]


def test_png_without_metadata_is_refused(tmp_path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(MetadataNotFound, match="no generation metadata"):
        read_metadata(path)


def test_not_an_image_is_refused(tmp_path) -> None:
    path = tmp_path / "x.png"
    path.write_text("hello")
    with pytest.raises(MetadataNotFound, match="not an image"):
        read_metadata(path)


def test_a1111_png_without_kakumei_chunk_is_readable() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "cat\nSteps: 12, Sampler: Euler, CFG scale: 5, Seed: 77, Size: 64x64")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG", pnginfo=info)
    request, index = read_metadata(buf.getvalue()).request_and_index()
    assert (request.prompt, request.steps, request.seed, index) == ("cat", 12, 77, 0)
    assert json.loads(request.model_dump_json())["sampler_name"] == "Euler"
