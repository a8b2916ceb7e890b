"""A worker that cheats, for tests: it returns pictures of another seed while claiming the
requested one (cheaper than honest work if it had cached them). Runs until the server
refuses it, then exits 3.

    python cheating_worker.py SERVER_URL   (key in KAKUMEI_WORKER_KEY, data dir in KAKUMEI_HOME)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from typing import Any

from kakumei.config import load_settings
from kakumei.engine.pipeline import Engine
from kakumei.protocol import Capabilities
from kakumei.worker import Worker
from kakumei.worker.remote import HttpJobSource, WorkerRefused


class WrongSeedEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def generate(self, request: Any, on_step: Any = None, cancelled: Any = None) -> Any:
        result = self.engine.generate(request.model_copy(update={"seed": request.seed + 1000}), on_step, cancelled)
        images = [dataclasses.replace(image, seed=request.seed + image.index) for image in result.images]
        return dataclasses.replace(result, seed=request.seed, images=images)


def main() -> int:
    settings = load_settings({"model": "kakumei:tiny", "device": "cpu"})
    source = HttpJobSource(sys.argv[1], os.environ["KAKUMEI_WORKER_KEY"])
    source.hello()
    worker = Worker(source, WrongSeedEngine(Engine(settings)), "cheat", capabilities=Capabilities(), poll_seconds=0.2)
    print("ready", flush=True)
    stop = threading.Event()
    try:
        while True:
            if not worker.run_one(stop):
                stop.wait(0.2)
    except WorkerRefused as exc:
        print(f"refused: {exc}", flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
