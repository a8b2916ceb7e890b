"""The local worker's batch size: "auto" by default, chosen by the engine's device (one job at a
time on a CPU, four on a GPU); an explicit worker_batch_jobs from TOML, environment or flags wins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kakumei.config import Settings, load_settings
from kakumei.errors import ConfigError
from kakumei.server.services import Services
from kakumei.worker.loop import CPU_BATCH_JOBS, GPU_BATCH_JOBS, batch_jobs_for


class _EngineOn:
    """An engine placed on `device_type`: lets a machine without a GPU check what the local
    worker would batch on one (the real Engine refuses a device it cannot use)."""

    def __init__(self, device_type: str) -> None:
        self.device = torch.device(device_type)

    def generate(self, request: Any, on_step: Any = None, cancelled: Any = None) -> Any:
        raise AssertionError("not run here")

    def generate_batch(self, requests: Any, on_step: Any = None, cancelled: Any = None) -> Any:
        raise AssertionError("not run here")


def _local_worker_batch(settings: Settings, engine: Any) -> int:
    svc = Services.open(settings, engine)
    try:
        return svc.local_worker().max_batch_jobs
    finally:
        svc.close()


def test_auto_is_the_default_and_can_be_spelled(tmp_path: Path) -> None:
    assert load_settings(environ={"KAKUMEI_HOME": str(tmp_path)}).worker_batch_jobs is None
    env = {"KAKUMEI_HOME": str(tmp_path), "KAKUMEI_WORKER_BATCH_JOBS": "Auto"}
    assert load_settings(environ=env).worker_batch_jobs is None
    (tmp_path / "kakumei.toml").write_text('worker_batch_jobs = "auto"\n')
    assert load_settings(environ={"KAKUMEI_HOME": str(tmp_path)}).worker_batch_jobs is None


def test_an_explicit_number_wins_in_toml_environment_and_flags(tmp_path: Path) -> None:
    (tmp_path / "kakumei.toml").write_text("worker_batch_jobs = 3\n")
    env = {"KAKUMEI_HOME": str(tmp_path)}
    assert load_settings(environ=env).worker_batch_jobs == 3
    assert load_settings(environ={**env, "KAKUMEI_WORKER_BATCH_JOBS": "2"}).worker_batch_jobs == 2
    assert load_settings({"worker_batch_jobs": 5}, environ={**env, "KAKUMEI_WORKER_BATCH_JOBS": "2"}).worker_batch_jobs == 5
    for bad in ("0", "17", "many"):
        with pytest.raises(ConfigError, match="worker_batch_jobs"):
            load_settings(environ={**env, "KAKUMEI_WORKER_BATCH_JOBS": bad})


def test_batch_jobs_for_each_device() -> None:
    assert (CPU_BATCH_JOBS, GPU_BATCH_JOBS) == (1, 4)
    assert [batch_jobs_for(d) for d in ("cpu", "cuda", "mps", None)] == [1, 4, 4, 1]
    assert [batch_jobs_for(d, 3) for d in ("cpu", "cuda", None)] == [3, 3, 3]


def test_local_worker_batches_one_job_on_the_cpu_engine(tiny_settings: Settings, engine: Any, tmp_path: Path) -> None:
    assert engine.device.type == "cpu"
    settings = tiny_settings.model_copy(update={"home": tmp_path / "home"})
    assert settings.worker_batch_jobs is None
    assert _local_worker_batch(settings, engine) == 1


@pytest.mark.parametrize("device_type", ["cuda", "mps"])
def test_local_worker_batches_four_jobs_on_a_gpu(tiny_settings: Settings, tmp_path: Path, device_type: str) -> None:
    settings = tiny_settings.model_copy(update={"home": tmp_path / "home"})
    assert _local_worker_batch(settings, _EngineOn(device_type)) == 4


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_explicit_setting_wins_over_the_device(tiny_settings: Settings, tmp_path: Path, device_type: str) -> None:
    settings = tiny_settings.model_copy(update={"home": tmp_path / "home", "worker_batch_jobs": 2})
    assert _local_worker_batch(settings, _EngineOn(device_type)) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_engine_on_cuda_batches_four(tiny_settings: Settings, tmp_path: Path) -> None:
    from kakumei.engine.pipeline import Engine

    settings = tiny_settings.model_copy(update={"home": tmp_path / "home", "device": "auto"})
    assert _local_worker_batch(settings, Engine(settings)) == 4


def test_worker_cli_refuses_a_batch_of_none(run_cli: Any) -> None:
    code, _, err = run_cli("worker", "--server", "http://127.0.0.1:9", "--key", "k", "--batch-jobs", "0")
    assert code != 0 and "--batch-jobs must be at least 1, got 0" in err
