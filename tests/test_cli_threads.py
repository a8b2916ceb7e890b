"""The `kakumei` command's threads sleep between operations unless the user says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

_PROBE = r"""
import os, sys
from kakumei.cli import main
sys.argv = ["kakumei", "--help"]
try:
    main(["generate", "--help"])
except SystemExit:
    pass
print("policy:", os.environ.get("OMP_WAIT_POLICY"), "torch:", "torch" in sys.modules)
"""


def _policy(environ: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                          env=environ, timeout=60).stdout.strip().splitlines()[-1]


def test_passive_wait_policy_is_set_before_torch_loads() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy(environ) == "policy: PASSIVE torch: False"
    assert _policy({**environ, "OMP_WAIT_POLICY": "ACTIVE"}) == "policy: ACTIVE torch: False"
