"""N compatible jobs of different users: one shared batch vs one by one, in the same run.

Default: the SD 1.5 architecture with random weights at 256x256 on the CPU, 4 jobs with
different prompts, CFG scales and seeds. Prints seconds for both ways, images per second,
the throughput ratio, and the largest per-image difference between the two ways (PSNR).

    python benchmarks/batching.py [--jobs 4] [--steps 6] [--size 256] [--device cpu] [--model tiny]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Python puts this folder first on sys.path, where benchmarks/queue.py would shadow the
# standard library's queue; move it to the end so only _models is found here.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import torch  # noqa: E402
from _models import bench_cache, psnr, sd15_random  # noqa: E402

PROMPTS = ["a red fox in snow", "a lighthouse at dusk, oil painting", "portrait of an old sailor", "a bowl of ramen"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=["sd15", "tiny"], default="sd15")
    args = parser.parse_args()
    size = args.size or (256 if args.device == "cpu" else 512)

    from kakumei.config import load_settings
    from kakumei.engine.devices import quiet_libraries
    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest

    quiet_libraries()
    model = "kakumei:tiny" if args.model == "tiny" else str(sd15_random())
    settings = load_settings({"model": model, "device": args.device},
                             environ={"KAKUMEI_HOME": str(bench_cache() / "home"), "HF_HUB_OFFLINE": "1"})
    engine = Engine(settings)
    jobs = [
        GenerationRequest(prompt=PROMPTS[i % len(PROMPTS)], cfg_scale=5.0 + i, seed=100 + i, steps=args.steps,
                          width=size, height=size, sampler_name="Euler a")
        for i in range(args.jobs)
    ]

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    engine.generate(jobs[0].model_copy(update={"steps": 1}))  # load and warm up
    sync()
    start = time.perf_counter()
    alone = [engine.generate(job).images[0].image for job in jobs]
    sync()
    t_alone = time.perf_counter() - start
    start = time.perf_counter()
    batched = [r.images[0].image for r in engine.generate_batch(jobs)]
    sync()
    t_batched = time.perf_counter() - start

    print(f"device={args.device} model={args.model} size={size} steps={args.steps} jobs={args.jobs} "
          f"dtype={str(engine.load().dtype).removeprefix('torch.')} threads={torch.get_num_threads()}")
    print(f"{'':<14}{'seconds':>10}{'images/s':>10}")
    print(f"{'one by one':<14}{t_alone:>10.2f}{args.jobs / t_alone:>10.3f}")
    print(f"{'batched':<14}{t_batched:>10.2f}{args.jobs / t_batched:>10.3f}")
    print(f"throughput ratio batched/one-by-one: {t_alone / t_batched:.2f}x")
    print(f"batched vs alone, worst image: PSNR {min(psnr(a, b) for a, b in zip(alone, batched)):.1f} dB")


if __name__ == "__main__":
    main()
