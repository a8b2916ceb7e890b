"""Shared fixtures. Engine section: a data dir with the tiny model, built once per session.
Other sections belong to the layers named in their headers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never touch the network or the user's data dir.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --- engine -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kakumei_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir shared by the session, with the tiny model already built in it."""
    from kakumei.engine.devices import quiet_libraries
    from kakumei.engine.tiny import ensure_tiny_model

    quiet_libraries()
    home = tmp_path_factory.mktemp("kakumei-home")
    ensure_tiny_model(home / "models")
    return home


@pytest.fixture(scope="session")
def tiny_settings(kakumei_home: Path):
    from kakumei.config import load_settings

    return load_settings({"model": "kakumei:tiny", "device": "cpu"}, environ={"KAKUMEI_HOME": str(kakumei_home), "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="session")
def engine(tiny_settings):
    from kakumei.engine.pipeline import Engine

    return Engine(tiny_settings)


@pytest.fixture
def cli_env(kakumei_home: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for running the `kakumei` CLI against the session's data dir."""
    env = {**os.environ, "KAKUMEI_HOME": str(kakumei_home), "KAKUMEI_MODEL": "kakumei:tiny", "KAKUMEI_OUTPUT_DIR": str(tmp_path / "out")}
    yield env
