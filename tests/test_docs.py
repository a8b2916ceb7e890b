"""Docs that cannot drift: every setting and every CLI flag appears in README.md."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kakumei.cli import build_parser
from kakumei.config import _ENV_FIELDS, Settings

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented(field: str) -> None:
    if field == "hf_offline":
        assert "HF_HUB_OFFLINE" in README
        return
    assert f"`{field}`" in README, f"setting {field} is missing from README.md"


@pytest.mark.parametrize("var", sorted(_ENV_FIELDS))
def test_every_environment_variable_is_documented(var: str) -> None:
    assert f"`{var}`" in README


def _flags() -> list[tuple[str, str]]:
    """(command path, flag) for every long option at every level of subcommands."""
    found = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}".strip())
            elif path:
                for flag in action.option_strings:
                    if flag.startswith("--") and flag != "--help":
                        found.append((path, flag))

    walk(build_parser(), "")
    return found


@pytest.mark.parametrize("command, flag", _flags())
def test_every_cli_flag_is_documented(command: str, flag: str) -> None:
    assert f"`{flag}" in README, f"`kakumei {command} {flag}` is missing from README.md"
