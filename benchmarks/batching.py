"""Batch size on one device: throughput and each job's latency for batches of 1, 2 and 4 jobs,
as ratios against batch 1 measured in the same run.

Default: the SD 1.5 architecture with random weights (speed does not depend on weight values)
at 256x256 on the CPU, 4 compatible jobs of different users (different prompts, CFG scales and
seeds) waiting when the worker starts. For each batch size the worker takes the jobs that many
at a time, as the local worker does with `worker_batch_jobs`. A job's latency is the time from
the claim of its batch to the job's completion: a batched job finishes only when the whole
batch does, so batching trades each job's latency for throughput. Rounds alternate the order
of the batch sizes so that a machine getting busier or quieter mid-run does not favour one.
Printed twice: by the wall clock, and by this process's CPU seconds over its threads, which is
what the run would take with the cores to itself when other work shares the machine. Also prints the largest per-image difference between batched and alone (PSNR).

    python benchmarks/batching.py [--jobs 4] [--steps 4] [--size 256] [--device cpu]
                                  [--model sd15|tiny] [--sizes 1,2,4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Python puts this folder first on sys.path, where a file named like a standard-library
# module would shadow it; move it to the end so only _models is found here.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import torch  # noqa: E402
from _models import bench_cache, psnr, sd15_random  # noqa: E402

PROMPTS = ["a red fox in snow", "a lighthouse at dusk, oil painting", "portrait of an old sailor", "a bowl of ramen"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="jobs waiting for the worker (a multiple of every size)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=None, help="pixels per side (default 256 on the CPU, 512 on a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument("--sizes", default="1,2,4", help="batch sizes to compare; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=2, help="passes over all sizes, order alternating")
    args = parser.parse_args()
    size = args.size or (256 if args.device == "cpu" else 512)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(args.jobs % b for b in sizes):
        parser.error(f"--jobs {args.jobs} must be a multiple of every batch size in {sizes}")

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

    def run(batch: int, clock: Callable[[], float]) -> tuple[list[float], list]:
        """All jobs, `batch` at a time: each job's latency on `clock`, and the images."""
        latencies, images = [], []
        for first in range(0, len(jobs), batch):
            group = jobs[first:first + batch]
            claimed = clock()
            if batch == 1:
                out = [engine.generate(group[0]).images[0].image]
            else:
                out = [r.images[0].image for r in engine.generate_batch(group)]
            sync()
            # every job of the batch completes when the batch does
            latencies += [clock() - claimed] * len(group)
            images += out
        return latencies, images

    engine.generate(jobs[0].model_copy(update={"steps": 1}))  # load and warm up
    engine.generate_batch([j.model_copy(update={"steps": 1}) for j in jobs[:max(sizes)]])
    sync()
    # Wall seconds, and this process's CPU seconds over its threads: on a machine that other
    # work shares, the second is what the run would take with the cores to itself.
    threads = torch.get_num_threads()
    clocks = {"wall": time.perf_counter, "cpu": lambda: time.process_time() / threads}
    lat: dict[str, dict[int, list[float]]] = {name: {b: [] for b in sizes} for name in clocks}
    images: dict[int, list] = {}
    for r in range(args.rounds):
        for b in (sizes if r % 2 == 0 else sizes[::-1]):
            wall, cpu = time.perf_counter(), clocks["cpu"]()
            latencies, imgs = run(b, time.perf_counter)
            lat["wall"][b] += latencies
            # the CPU clock of each job: its batch's share of the CPU time, in batch order
            spent = clocks["cpu"]() - cpu
            lat["cpu"][b] += [latency * spent / (time.perf_counter() - wall) for latency in latencies]
            images.setdefault(b, imgs)

    print(f"device={args.device} model={args.model} size={size} steps={args.steps} jobs={args.jobs} "
          f"rounds={args.rounds} dtype={str(engine.load().dtype).removeprefix('torch.')} "
          f"threads={torch.get_num_threads()}")
    base = sizes[0]
    for name, title in (("wall", "wall clock"), ("cpu", f"CPU seconds / {threads} threads (as with the cores to itself)")):
        # each batch's jobs share one latency, so a batch's time is its latency; runs = rounds
        thr = {b: args.jobs * args.rounds / sum(lat[name][b][::b]) for b in sizes}
        mean = {b: statistics.mean(lat[name][b]) for b in sizes}
        worst = {b: max(lat[name][b]) for b in sizes}
        print(f"{title}")
        print(f"{'batch':>5} | {'jobs/s':>7} {'ratio':>6} | {'latency mean':>12} {'ratio':>6} | "
              f"{'latency worst':>13} {'ratio':>6} | {'PSNR vs alone':>13}")
        for b in sizes:
            quality = "-" if b == base else f"{min(psnr(x, y) for x, y in zip(images[base], images[b])):.1f} dB"
            print(f"{b:>5} | {thr[b]:>7.3f} {thr[b] / thr[base]:>5.2f}x | {mean[b]:>11.2f}s {mean[b] / mean[base]:>5.2f}x | "
                  f"{worst[b]:>12.2f}s {worst[b] / worst[base]:>5.2f}x | {quality:>13}")
    print(f"latency: from the claim of a job's batch to the job's completion; ratios against batch {base}")


if __name__ == "__main__":
    main()
