"""Settings precedence: defaults < kakumei.toml < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from kakumei.config import DEFAULT_MODEL, load_settings
from kakumei.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(environ={"KAKUMEI_HOME": str(tmp_path)})
    assert s.home == tmp_path and s.model == DEFAULT_MODEL and s.device == "auto"
    assert s.outputs == tmp_path / "outputs"
    assert s.database_url == f"sqlite:///{tmp_path / 'kakumei.db'}"


def test_precedence(tmp_path: Path) -> None:
    (tmp_path / "kakumei.toml").write_text('model = "from-toml/model"\nport = 9000\ndevice = "cpu"\n')
    env = {"KAKUMEI_HOME": str(tmp_path), "KAKUMEI_MODEL": "from-env/model"}
    s = load_settings(environ=env)
    assert (s.model, s.port, s.device) == ("from-env/model", 9000, "cpu")
    s = load_settings({"model": "kakumei:tiny", "port": None}, environ=env)
    assert (s.model, s.port) == ("kakumei:tiny", 9000)


def test_bad_values_say_which_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device"):
        load_settings(environ={"KAKUMEI_HOME": str(tmp_path), "KAKUMEI_DEVICE": "tpu"})
    (tmp_path / "kakumei.toml").write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(environ={"KAKUMEI_HOME": str(tmp_path)})
