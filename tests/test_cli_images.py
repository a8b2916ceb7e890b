"""`kakumei generate` with pictures in: img2img, inpainting, hires fix and the refiner, as
the API takes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

SMALL = ["--steps", "2", "-W", "64", "-H", "64"]


def pngs(cli_env) -> list[Path]:
    return sorted(Path(cli_env["KAKUMEI_OUTPUT_DIR"]).glob("*.png"))


def recipe(run_cli, path: Path) -> dict:
    """The request a PNG records, with the hashes of its input pictures as "inputs"."""
    code, out, err = run_cli("info", str(path), "--json")
    assert code == 0, err
    meta = json.loads(out)
    return {**meta["request"], "inputs": meta.get("inputs") or {}}


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    """A 64x64 picture: left half red, right half blue."""
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    image.paste((30, 30, 220), (32, 0, 64, 64))
    path = tmp_path / "in.png"
    image.save(path)
    return path


def test_img2img_from_a_file(run_cli, cli_env, picture) -> None:
    code, _, err = run_cli("generate", "a fox", *SMALL, "--seed", "4", "--init-image", str(picture),
                           "--denoising-strength", "0.5", "--resize-mode", "crop and resize")
    assert code == 0, err
    request = recipe(run_cli, pngs(cli_env)[-1])
    assert request["denoising_strength"] == 0.5 and request["resize_mode"] == 1
    assert len(request["inputs"]["init_images_sha256"]) == 1
    # Without the picture the same seed draws something else: the input was used.
    run_cli("generate", "a fox", *SMALL, "--seed", "4")
    first, second = pngs(cli_env)[-2:]
    assert first.read_bytes() != second.read_bytes()


def test_inpainting_keeps_what_the_mask_does_not_cover(run_cli, cli_env, picture, tmp_path) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))  # repaint the middle only
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    code, _, err = run_cli("generate", "a fox", *SMALL, "--seed", "4", "--init-image", str(picture),
                           "--mask", str(mask_path), "--mask-blur", "0", "--inpainting-fill", "original")
    assert code == 0, err
    out = Image.open(pngs(cli_env)[-1]).convert("RGB")
    # Far from the mask the picture is kept (the VAE round trip blurs it a little).
    red, blue = out.getpixel((4, 4)), out.getpixel((60, 60))
    assert red[0] > 150 and red[2] < 100, red
    assert blue[2] > 150 and blue[0] < 100, blue
    request = recipe(run_cli, pngs(cli_env)[-1])
    assert request["mask_blur"] == 0 and request["inpainting_fill"] == 1 and request["inputs"]["mask_sha256"]


def test_invert_mask_and_full_res_flags_reach_the_request(run_cli, cli_env, picture, tmp_path) -> None:
    mask_path = tmp_path / "mask.png"
    mask = Image.new("L", (64, 64), 255)
    mask.paste(0, (16, 16, 48, 48))  # inverted: the middle is repainted
    mask.save(mask_path)
    code, _, err = run_cli("generate", "a fox", *SMALL, "--init-image", str(picture), "--mask", str(mask_path),
                           "--invert-mask", "--inpaint-full-res", "--inpaint-full-res-padding", "8")
    assert code == 0, err
    request = recipe(run_cli, pngs(cli_env)[-1])
    assert request["inpainting_mask_invert"] == 1 and request["inpaint_full_res"] is True
    assert request["inpaint_full_res_padding"] == 8


def test_hires_fix_upscales(run_cli, cli_env) -> None:
    code, _, err = run_cli("generate", "a fox", *SMALL, "--hires", "--hr-scale", "1.5", "--hr-steps", "2",
                           "--hr-upscaler", "Lanczos", "--hr-denoising-strength", "0.6")
    assert code == 0, err
    path = pngs(cli_env)[-1]
    assert Image.open(path).size == (96, 96)
    request = recipe(run_cli, path)
    assert request["enable_hr"] is True and request["hr_second_pass_steps"] == 2
    assert request["hr_upscaler"] == "Lanczos" and request["denoising_strength"] == 0.6


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask", "{picture}"], "a mask needs an image to inpaint"),
        (["--init-image", "/no/such/picture.png"], "--init-image /no/such/picture.png: no such file"),
        (["--init-image", "{folder}"], "is a folder"),
        (["--init-image", "{text}"], "is not an image kakumei can read"),
        (["--hr-scale", "9"], "hr_scale must be at most 4, got 9"),
        (["--cfg-scale", "99"], "cfg_scale must be at most 30, got 99"),
        (["--hires", "--init-image", "{picture}"], "hires fix (enable_hr) is for text-to-image"),
        (["--init-image", "{picture}", "--refiner", "kakumei:tiny"], "the refiner applies to text-to-image"),
        (["--denoising-strength", "0.5", "--hr-denoising-strength", "0.6"], "give one"),
    ],
)
def test_bad_picture_flags_are_one_sentence(run_cli, picture, tmp_path, extra, message) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    argv = [a.format(picture=picture, folder=tmp_path, text=text) for a in extra]
    code, _, err = run_cli("generate", "x", *SMALL, *argv)
    assert code != 0
    assert message in err, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err


def test_a_mask_that_covers_nothing_is_refused(run_cli, picture, tmp_path) -> None:
    mask_path = tmp_path / "white.png"
    Image.new("L", (64, 64), 255).save(mask_path)
    code, _, err = run_cli("generate", "x", *SMALL, "--init-image", str(picture), "--mask", str(mask_path),
                           "--invert-mask", "--inpaint-full-res")
    assert code != 0 and "the mask (inverted) is all black, so nothing would be repainted" in err, err
    assert "Traceback" not in err


def test_unknown_choice_names_the_choices(run_cli) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli("generate", "x", "--resize-mode", "stretch")
    assert exit_.value.code == 2


def test_debug_after_the_command(run_cli) -> None:
    code, _, err = run_cli("generate", "x", "-W", "65", "--debug")
    assert code != 0 and "Traceback" in err and "width must be a multiple of 8" in err
