"""The suite's markers stay true to it: every test listed as slow still exists."""

from __future__ import annotations

import ast

import pytest

from tests.fixtures.markers import SLOW, TESTS


@pytest.mark.parametrize("entry", sorted(SLOW))
def test_every_slow_entry_names_a_test(entry: str) -> None:
    path, _, name = entry.partition("::")
    source = TESTS / path
    assert source.is_file(), f"{entry}: no such test file"
    if name:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in names, f"{entry}: no such test in {path}"
