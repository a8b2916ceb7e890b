"""kakumei models list | import | remove, through the CLI's main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kakumei.cli import main
from kakumei.engine.single_file import save_single_file
from kakumei.engine.tiny import build_tiny_pipeline


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KAKUMEI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "home"


def test_import_list_remove(home: Path, tmp_path: Path, capsys) -> None:
    ckpt = save_single_file(build_tiny_pipeline("sd1"), tmp_path / "mine.safetensors")
    assert main(["models", "import", str(ckpt)]) == 0
    assert (home / "models" / "checkpoints" / "mine.safetensors").is_file()
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["name"] == "mine" and entry["kind"] == "checkpoint" and entry["architecture"] == "sd1"
    assert len(entry["sha256"]) == 64 and entry["size"] == ckpt.stat().st_size
    assert main(["models", "list"]) == 0
    assert "mine" in capsys.readouterr().out
    assert main(["models", "remove", "mine"]) == 0
    assert not (home / "models" / "checkpoints" / "mine.safetensors").exists()


def test_a1111_folder_is_linked_in_place(home: Path, tmp_path: Path, capsys) -> None:
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    (webui / "models" / "Lora").mkdir(parents=True)
    (webui / "embeddings").mkdir(parents=True)
    save_single_file(build_tiny_pipeline("sd1"), webui / "models" / "Stable-diffusion" / "theirs.safetensors")
    assert main(["models", "import", str(webui)]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--json", "--no-hashes"]) == 0
    names = {e["name"] for e in json.loads(capsys.readouterr().out)}
    assert "theirs" in names


def test_bad_inputs_are_one_line(home: Path, tmp_path: Path, capsys) -> None:
    assert main(["models", "remove", "nothing"]) == 2
    assert "no model named 'nothing'" in capsys.readouterr().err
    assert main(["models", "import", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["models", "pull", "owner/model"]) == 2
    assert "offline" in capsys.readouterr().err
