"""The suite's shared fixtures and hooks, as plugins under tests/fixtures/ (declared only here,
as pytest requires). Directory conftests add what only their tests use."""

from __future__ import annotations

import os

# Tests never touch the network or the user's data dir.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.fixtures.markers",
    "tests.fixtures.engine",
    "tests.fixtures.db",
]
