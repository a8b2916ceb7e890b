"""The `kakumei` command line: generate, info, --from, and every bad input."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image



def out_files(cli_env) -> list[Path]:
    return sorted(Path(cli_env["KAKUMEI_OUTPUT_DIR"]).glob("*.png"))


SMALL = ["--steps", "2", "-W", "64", "-H", "64"]


def test_generate_writes_numbered_pngs_that_never_overwrite(run_cli, cli_env) -> None:
    code, _, err = run_cli("generate", "a red fox in snow", *SMALL, "--seed", "10", "-b", "2")
    assert code == 0, err
    assert "noise" in err  # the tiny model says plainly what it is
    code, _, err = run_cli("generate", "a red fox in snow", *SMALL, "--seed", "10", "-b", "2")
    assert code == 0, err
    files = out_files(cli_env)
    assert [p.name for p in files] == ["00000-10.png", "00001-11.png", "00002-10.png", "00003-11.png"]
    assert Image.open(files[0]).size == (64, 64)
    # same request, same seed: same bytes
    assert files[0].read_bytes() == files[2].read_bytes()
    assert files[1].read_bytes() == files[3].read_bytes()


def test_info_prints_infotext_and_json(run_cli, cli_env) -> None:
    run_cli("generate", "a lighthouse", "-n", "fog", *SMALL, "--seed", "3", "--sampler", "DPM++ 2M", "--scheduler", "Karras")
    code, out, _ = run_cli("info", str(out_files(cli_env)[0]))
    assert code == 0
    assert out.startswith("a lighthouse\nNegative prompt: fog\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras")
    assert '"sha256"' in out


def test_from_regenerates_exactly_and_flags_override(run_cli, cli_env) -> None:
    run_cli("generate", "a castle", *SMALL, "--seed", "20", "-b", "2", "--n-iter", "2")
    originals = out_files(cli_env)
    assert len(originals) == 4
    third = originals[2]
    code, _, err = run_cli("generate", "--from", str(third))
    assert code == 0, err
    regenerated = out_files(cli_env)[-1]
    assert regenerated.name.endswith("-22.png")
    assert regenerated.read_bytes() == third.read_bytes()
    code, _, err = run_cli("generate", "--from", str(third), "--steps", "3")
    assert code == 0, err
    code, out, _ = run_cli("info", str(out_files(cli_env)[-1]))
    assert "Steps: 3," in out and "Seed: 22," in out and out.startswith("a castle")


@pytest.fixture
def corrupt_model(kakumei_home: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "broken-model"
    shutil.copytree(kakumei_home / "models" / "kakumei-tiny", folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])  # truncated download
    return folder


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "x", "--sampler", "Euler z"], "unknown sampler 'Euler z'; known: Euler, Euler a"),
        (["generate", "x", "--scheduler", "Karras", "--sampler", "DDIM"], "does not apply to sampler 'DDIM'"),
        (["generate", "x", "--scheduler", "Wobbly"], "unknown schedule 'Wobbly'; known: Automatic"),
        (["generate", "x", "-W", "500"], "width must be a multiple of 8"),
        (["generate", "x", "-H", "4096"], "height must be between 64 and 2048"),
        (["generate", "x", "--steps", "0"], "steps must be between 1 and 150"),
        (["generate", "x", "--steps", "-3"], "steps must be between 1 and 150"),
        (["generate", "x", "--model", "./no/such/model"], "no model at './no/such/model'"),
        (["generate"], "give a prompt"),
    ],
)
def test_bad_input_is_one_sentence_and_nonzero(run_cli, argv, message) -> None:
    code, _, err = run_cli(*argv)
    assert code != 0
    assert message in err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, err  # one line


def test_corrupt_checkpoint(run_cli, corrupt_model) -> None:
    code, _, err = run_cli("generate", "x", *SMALL, "--model", str(corrupt_model))
    assert code != 0
    assert "could not load model" in err and "corrupt or truncated" in err
    assert "Traceback" not in err


def test_from_png_without_metadata(run_cli, tmp_path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 64)).save(plain)
    code, _, err = run_cli("generate", "--from", str(plain))
    assert code != 0 and "carries no generation metadata" in err and "Traceback" not in err


def test_debug_shows_traceback(run_cli, tmp_path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 64)).save(plain)
    code, _, err = run_cli("--debug", "generate", "--from", str(plain))
    assert code != 0 and "Traceback" in err


def test_ctrl_c_stops_between_steps_and_keeps_finished_images(cli_env) -> None:
    """A real process and a real SIGINT: the first image is kept, the run stops early."""
    out_dir = Path(cli_env["KAKUMEI_OUTPUT_DIR"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "kakumei.cli", "generate", "slow fox", "--steps", "40", "-W", "256", "-H", "256",
         "--n-iter", "20", "--seed", "1"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    while not list(out_dir.glob("*.png")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no image was written"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    kept = list(out_dir.glob("*.png"))
    assert 1 <= len(kept) < 20
    assert "stopped: kept" in err and "Traceback" not in err
    for path in kept:  # every kept file is a complete PNG
        Image.open(path).load()


def test_the_process_ends_with_the_commands_code_and_all_its_output(cli_env) -> None:
    """`kakumei generate` leaves without the interpreter's teardown (cli.run): what it printed
    and wrote is all there, and the exit code is the command's."""
    out_dir = Path(cli_env["KAKUMEI_OUTPUT_DIR"])
    done = subprocess.run([sys.executable, "-m", "kakumei.cli", "generate", "a fox", *SMALL, "--seed", "4"],
                          env=cli_env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stderr.rstrip().endswith(f"1 image(s) in {out_dir}")
    [image] = out_dir.glob("*-4.png")
    Image.open(image).load()
    refused = subprocess.run([sys.executable, "-m", "kakumei.cli", "generate", "a fox", "--model", "./no/such/model"],
                             env=cli_env, capture_output=True, text=True, timeout=240)
    assert refused.returncode == 2 and "error: no model at './no/such/model'" in refused.stderr
