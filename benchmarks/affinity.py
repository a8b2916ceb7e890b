"""Model affinity: two models, a mixed queue from several users, served by one worker whose
engine holds one model at a time. With affinity the worker prefers jobs for its loaded model
(within the fairness slack); without, it follows the fair order alone. Same jobs, same run.

Prints model loads, wall seconds and jobs/s for both, and the ratio. Uses the real store
(SQLite in a temporary folder), the real worker loop and the real Engine on two tiny models.

    python benchmarks/affinity.py [--jobs 40] [--users 4] [--size 128] [--steps 4]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]


def run(mode: str, models: list[str], args: argparse.Namespace, home: Path) -> tuple[int, float]:
    from kakumei.config import load_settings
    from kakumei.engine.pipeline import Engine
    from kakumei.fairness.cost import request_cost
    from kakumei.schemas import GenerationRequest
    from kakumei.server.job_source import StoreJobSource
    from kakumei.store.db import Database
    from kakumei.store.images import ImageStore
    from kakumei.store.jobs import JobStore, NewJob
    from kakumei.store.migrate import migrate
    from kakumei.store.users import UserStore
    from kakumei.worker import Worker

    db_dir = Path(tempfile.mkdtemp(dir=home))
    db = Database(f"sqlite:///{db_dir / 'q.db'}")
    migrate(db)
    images = ImageStore(db, db_dir / "images")
    jobs, users = JobStore(db, images), UserStore(db)
    uids = [users.add(f"u{i}", 1.0)[0].id for i in range(args.users)]
    # Each user alternates between the two models: the fair order switches model often.
    batch = []
    for i in range(args.jobs):
        model = models[(i // args.users) % 2] if args.users > 1 else models[i % 2]
        req = GenerationRequest(prompt=f"job {i}", width=args.size, height=args.size, steps=args.steps, seed=i)
        batch.append(NewJob(uids[i % args.users], req, model, request_cost(req, model)))
    jobs.submit_many(batch)
    settings = load_settings({"device": "cpu"}, environ={"KAKUMEI_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    engine = Engine(settings, cache_size=1)
    loads = 0
    original = engine._cache.get

    def counting_get(key, load):  # count real loads, not cache hits
        def counted():
            nonlocal loads
            loads += 1
            return load()
        return original(key, counted)

    engine._cache.get = counting_get  # type: ignore[method-assign]
    if mode == "fair order only":
        worker = Worker(StoreJobSource(jobs, images), _NoAffinity(engine), "w", max_batch_jobs=1)
    else:
        worker = Worker(StoreJobSource(jobs, images), engine, "w", max_batch_jobs=1, fairness_slack=args.slack)
    start = time.perf_counter()
    while worker.run_one():
        pass
    seconds = time.perf_counter() - start
    db.close()
    return loads, seconds


class _NoAffinity:
    """The engine without `loaded_model_refs`: the worker claims in fair order only."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def generate(self, *args, **kwargs):
        return self._engine.generate(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--slack", type=float, default=2.0, help="fairness slack in compute units")
    args = parser.parse_args()

    from kakumei.engine.devices import quiet_libraries
    from kakumei.engine.tiny import ensure_tiny_model

    quiet_libraries()
    home = Path(tempfile.mkdtemp(prefix="kakumei-affinity-"))
    try:
        first = ensure_tiny_model(home / "models")
        second = home / "models" / "tiny-copy"
        shutil.copytree(first, second)  # a second model: another path, so another cache entry
        models = [str(first), str(second)]
        rows = [(mode, *run(mode, models, args, home)) for mode in ("fair order only", "with affinity")]
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"jobs={args.jobs} users={args.users} models=2 size={args.size} steps={args.steps} slack={args.slack} "
          "engine LRU=1 model")
    print(f"{'':<18}{'loads':>7}{'seconds':>10}{'jobs/s':>9}")
    for mode, loads, seconds in rows:
        print(f"{mode:<18}{loads:>7}{seconds:>10.2f}{args.jobs / seconds:>9.2f}")
    print(f"throughput ratio with/without affinity: {rows[0][2] / rows[1][2]:.2f}x; "
          f"loads {rows[0][1]} -> {rows[1][1]}")


if __name__ == "__main__":
    main()
