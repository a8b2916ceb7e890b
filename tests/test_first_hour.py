"""What a new user meets in the first hour: a missing model offline, a bad flag, a busy port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kakumei.cli import main
from tests.support import listening_socket, start_serve, stop, url_of

MISSING = "nobody-here/no-such-model"


@pytest.fixture
def bare_env(tmp_path: Path, monkeypatch) -> dict[str, str]:
    """A fresh data dir without models, offline, and an empty Hugging Face cache."""
    env = {
        **os.environ,
        "KAKUMEI_HOME": str(tmp_path / "home"),
        "KAKUMEI_OUTPUT_DIR": str(tmp_path / "out"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    env.pop("KAKUMEI_MODEL", None)
    for key in ("KAKUMEI_HOME", "KAKUMEI_OUTPUT_DIR", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("KAKUMEI_MODEL", raising=False)
    return env


def test_offline_first_run_says_what_is_missing_in_two_lines(bare_env, capsys) -> None:
    code = main(["generate", "a red fox in snow", "--model", MISSING])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2, err
    assert "kakumei models pull" in err and "--model PATH" in err and "--model kakumei:tiny" in err
    assert "stacktrace" not in err
    assert "0%" not in err and "generating" not in err  # no progress bar for a model that is not there


@pytest.mark.parametrize(
    "flags, field",
    [(["--width", "65"], "width"), (["--sampler", "Nope"], "sampler")],
)
def test_bad_arguments_are_refused_before_torch_loads(bare_env, flags: list[str], field: str) -> None:
    code = (
        "import sys; from kakumei.cli import main; "
        f"rc = main(['generate', 'x', *{flags!r}]); "
        "print('torch' in sys.modules, rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=bare_env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "2"], done.stdout + done.stderr
    assert "error:" in done.stderr and field in done.stderr


def test_serve_on_a_busy_port_says_so_without_the_success_line(bare_env, tmp_path: Path) -> None:
    held = listening_socket()
    port = held.getsockname()[1]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kakumei.cli", "serve", "--port", str(port), "--no-local-worker"],
            env=bare_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        held.close()
    assert done.returncode != 0
    assert "serving http" not in done.stderr
    assert f"port {port}" in done.stderr and "in use" in done.stderr, done.stderr
    assert "Errno" not in done.stderr


def test_serve_warns_at_start_when_its_model_is_missing(bare_env, tmp_path: Path) -> None:
    sock = listening_socket()
    log = tmp_path / "serve.log"
    proc = start_serve(sock, ["--model", MISSING], bare_env, log)
    try:
        health = httpx.get(f"{url_of(sock)}/healthz", timeout=10).json()
    finally:
        stop(proc)
        sock.close()
    text = log.read_text()
    assert "warning:" in text and MISSING in text and "kakumei models pull" in text
    assert health["status"] == "ok" and "database" in health
    assert health["model"].startswith(f"missing: {MISSING}")


def test_hub_unreachable_is_the_same_two_lines_without_diffusers_text(monkeypatch) -> None:
    import torch

    from kakumei.engine import models
    from kakumei.errors import ModelNotFound

    def no_network(location: str, dtype: object, local_only: bool) -> None:
        raise OSError(
            f"Cannot load model {location}: model is not cached locally and an error occurred while trying to "
            "fetch metadata from the Hub. Please check out the root cause in the stacktrace above."
        )

    monkeypatch.setattr(models, "_load_pipeline", no_network)
    source = models.ModelSource(MISSING, "hub", MISSING, "no-such-model")
    with pytest.raises(ModelNotFound) as caught:
        models._load_hub(source, torch.float32, offline=False)
    message = str(caught.value)
    assert len(message.splitlines()) <= 2
    assert "stacktrace" not in message and "could not be reached" in message
    assert "kakumei models pull" in message and "--model kakumei:tiny" in message


@pytest.mark.parametrize("argv", [
    ["worker", "--server", "http://127.0.0.1:9", "--key", "k"],
    ["worker", "--horde", "http://127.0.0.1:9", "--key", "k" * 22],
    ["serve", "--port", "0"],
])
def test_servers_and_workers_refuse_deepcache(bare_env, argv: list[str]) -> None:
    # Their images are judged against exact re-runs: DeepCache would quarantine honest workers.
    done = subprocess.run([sys.executable, "-m", "kakumei.cli", *argv], env={**bare_env, "KAKUMEI_DEEPCACHE_INTERVAL": "3"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "deepcache_interval" in done.stderr and "set deepcache_interval to 0" in done.stderr, done.stderr
    assert "serving http" not in done.stderr and "Traceback" not in done.stderr
