"""Training-free accelerations that change the image, against kakumei's exact image of the
same request, in the same run.

The SD 1.5 architecture with random weights (_models.sd15_random), kakumei's own CPU path
(bf16 where the CPU has it natively, channels-last), Euler, CFG 7. For each DeepCache
interval (setting `deepcache_interval`) prints seconds per image, the speed-up over the exact
path and the PSNR against the exact image of the same request and seed. `--tome 0.5` adds
token merging through the tomesd package (installed by hand: not a kakumei dependency) at
that ratio. Rounds interleave the variants, in turn forwards and backwards, so that machine noise hits
them alike; each timing is printed as it is taken.

Random weights make the PSNR a rough guide only: a trained UNet's deep features change more
slowly from step to step (which is what DeepCache relies on), so real models usually lose
less than this shows; judge the image on a real model before turning it on.

    python benchmarks/accelerations.py [--size 256] [--steps 20] [--rounds 2] [--intervals 2,3] [--tome 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import torch  # noqa: E402

from _models import bench_cache, psnr, sd15_random  # noqa: E402

PROMPT = "a red fox in snow, detailed fur, golden hour"
NEGATIVE = "blurry, lowres"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--intervals", default="2,3", help="DeepCache intervals to measure, comma-separated")
    parser.add_argument("--tome", default="", help="token-merging ratios to measure through the tomesd package "
                        "(installed by hand, not a kakumei dependency), comma-separated, e.g. 0.5")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    intervals = [int(v) for v in args.intervals.split(",") if v]
    tome_ratios = [float(v) for v in args.tome.split(",") if v]

    from kakumei.config import load_settings
    from kakumei.engine.devices import quiet_libraries
    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest

    quiet_libraries()
    folder = sd15_random()
    base = load_settings({"model": str(folder), "device": args.device},
                         environ={"KAKUMEI_HOME": str(bench_cache() / "home"), "HF_HUB_OFFLINE": "1"})
    engine = Engine(base)
    # name -> (settings, token-merging ratio or None)
    variants: dict[str, tuple[object, float | None]] = {"exact": (base, None)}
    for n in intervals:
        variants[f"deepcache_interval={n}"] = (base.model_copy(update={"deepcache_interval": n}), None)
    if tome_ratios:
        import tomesd  # not a kakumei dependency: installed by hand for this measurement

        for r in tome_ratios:
            variants[f"tomesd ratio={r}"] = (base, r)

    def run(name: str, steps: int, seed: int) -> tuple[float, object]:
        settings, ratio = variants[name]
        # one engine (one loaded model) for every variant: only the setting differs
        engine.settings = settings
        unet = engine.load().pipe.unet
        if ratio is not None:
            tomesd.apply_patch(unet, ratio=ratio)
        req = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=args.size, height=args.size,
                                steps=steps, cfg_scale=7.0, seed=seed, sampler_name="Euler")
        try:
            start = time.perf_counter()
            image = engine.generate(req).images[0].image
            return time.perf_counter() - start, image
        finally:
            if ratio is not None:
                tomesd.remove_patch(unet)

    for name in variants:  # warm-up: the first calls pay for loading and kernel selection
        run(name, 2, 0)
    times: dict[str, list[float]] = {name: [] for name in variants}
    quality: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        # A B C, then C B A: a load that drifts during the run hits every variant alike
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        images = {}
        for name in order:
            t, images[name] = run(name, args.steps, 1000 + r)
            times[name].append(t)
            print(f"round {r} {name}: {t:.2f} s", flush=True)
        for name in variants:
            if name != "exact":
                quality[name].append(psnr(images["exact"], images[name]))
    exact_s = statistics.median(times["exact"])
    print(f"device={args.device} size={args.size} steps={args.steps} rounds={args.rounds} cfg=7 sampler=Euler "
          f"dtype={str(engine.load().dtype).removeprefix('torch.')} torch threads={torch.get_num_threads()}")
    # best of the rounds too: on a shared machine other work only ever adds time
    print(f"{'':<24}{'s/image':>10}{'speed-up':>10}{'best s':>10}{'speed-up':>10}{'PSNR dB (min/median)':>24}")
    exact_best = min(times["exact"])
    for name in variants:
        s, best = statistics.median(times[name]), min(times[name])
        q = f"{min(quality[name]):.1f} / {statistics.median(quality[name]):.1f}" if quality[name] else "exact"
        print(f"{name:<24}{s:>10.2f}{exact_s / s:>9.2f}x{best:>10.2f}{exact_best / best:>9.2f}x{q:>24}")


if __name__ == "__main__":
    main()
