"""The same request through kakumei's Engine and through plain diffusers, in the same run.

CPU (default): the SD 1.5 architecture with random weights at 256x256, diffusers in fp32 as
users run it out of the box, kakumei with its automatic choices (bf16 where the CPU has it
natively, channels-last). Prints seconds per image for both, the ratio, and the PSNR of
kakumei's image against diffusers' fp32 image of the same request and seed.

GPU: `--device cuda --size 512` compares against diffusers fp16 and prints iterations/s.

    python benchmarks/engine_vs_diffusers.py [--steps 10] [--rounds 2] [--device cpu] [--size 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# Python puts this folder first on sys.path, where a file named like a standard-library
# module would shadow it; move it to the end so only _models is found here.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import torch  # noqa: E402

from _models import bench_cache, psnr, sd15_random  # noqa: E402

PROMPT = "a red fox in snow, detailed fur, golden hour"
NEGATIVE = "blurry, lowres"


def plain_diffusers(folder: Path, device: str, dtype: torch.dtype):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=dtype, safety_checker=None)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)

    def run(size: int, steps: int, seed: int):
        gen = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            return pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
                        guidance_scale=7.0, generator=gen).images[0]

    return run


def kakumei_engine(folder: Path, device: str, dtype: str):
    from kakumei.config import load_settings
    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest

    settings = load_settings({"model": str(folder), "device": device, "dtype": dtype},
                             environ={"KAKUMEI_HOME": str(bench_cache() / "home"), "HF_HUB_OFFLINE": "1"})
    engine = Engine(settings)

    def run(size: int, steps: int, seed: int):
        req = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=steps,
                                cfg_scale=7.0, seed=seed, sampler_name="Euler")
        return engine.generate(req).images[0].image

    return run, engine


def timed(run, size: int, steps: int, seed: int):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    image = run(size, steps, seed)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--kakumei-dtype", default="auto")
    args = parser.parse_args()
    gpu = args.device != "cpu"
    size = args.size or (512 if gpu else 256)

    from kakumei.engine.devices import quiet_libraries

    quiet_libraries()
    folder = sd15_random()
    base_dtype = torch.float16 if gpu else torch.float32
    base = plain_diffusers(folder, args.device, base_dtype)
    ours, engine = kakumei_engine(folder, args.device, args.kakumei_dtype)

    # warm-up: first calls pay for kernel selection and allocation
    timed(base, size, 2, 0)
    timed(ours, size, 2, 0)
    base_times, our_times, quality = [], [], []
    for r in range(args.rounds):  # interleaved, so that machine noise hits both alike
        tb, ib = timed(base, size, args.steps, 1000 + r)
        to, io = timed(ours, size, args.steps, 1000 + r)
        base_times.append(tb)
        our_times.append(to)
        quality.append(psnr(ib, io))
    b, o = statistics.median(base_times), statistics.median(our_times)
    print(f"device={args.device} size={size} steps={args.steps} rounds={args.rounds} cfg=7 sampler=Euler")
    print(f"torch threads={torch.get_num_threads()} kakumei dtype={str(engine.load().dtype).removeprefix('torch.')} "
          f"diffusers dtype={str(base_dtype).removeprefix('torch.')}")
    print(f"{'':<22}{'s/image':>10}{'it/s':>10}")
    print(f"{'plain diffusers':<22}{b:>10.2f}{args.steps / b:>10.2f}")
    print(f"{'kakumei':<22}{o:>10.2f}{args.steps / o:>10.2f}")
    print(f"speed-up kakumei/diffusers: {b / o:.2f}x")
    print(f"PSNR vs diffusers {str(base_dtype).removeprefix('torch.')} image: min {min(quality):.1f} dB, "
          f"median {statistics.median(quality):.1f} dB")


if __name__ == "__main__":
    main()
