"""What a run imports: the CLI's generate path leaves out what it does not use."""

from __future__ import annotations

import subprocess
import sys

_PROBE = r"""
import sys
from kakumei.engine.pipeline import Engine
from kakumei.engine.samplers import make_scheduler
make_scheduler("Euler", "Automatic", {"num_train_timesteps": 1000})
print("before:", sorted(m for m in ("scipy.sparse", "scipy.special", "scipy.linalg") if m in sys.modules))
scheduler = make_scheduler("Euler", "Beta", {"num_train_timesteps": 1000})
scheduler.set_timesteps(4)
print("beta:", type(sys.modules["scipy.stats"]).__name__, round(float(scheduler.sigmas[1]), 2))
"""


def test_scipy_waits_for_the_schedules_that_use_it() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120).stdout
    assert "before: []" in out
    # the "Beta" schedule gets the real scipy.stats (the stand-in gave way to it)
    assert "beta: module 114.06" in out
