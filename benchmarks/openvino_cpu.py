"""OpenVINO through optimum-intel on the CPU, from a local diffusers folder, offline.

Not a kakumei dependency: run it with a Python environment of its own that has torch (CPU),
diffusers, `openvino` and `optimum-intel[openvino]` (optimum-intel pins transformers and
huggingface_hub versions of its own, older than kakumei's). kakumei's side of the comparison
is benchmarks/engine_vs_diffusers.py in kakumei's environment, same folder, size and steps.

Measures, on the SD 1.5 architecture with random weights (_models.sd15_random):
- the one-off conversion (`OVStableDiffusionPipeline.from_pretrained(folder, export=True)`
  and saving the OpenVINO folder), then loading and compiling that folder as a later run would;
- seconds per image at each step count for OpenVINO (its default CPU inference precision,
  bf16 where the CPU has it natively), for kakumei's CPU path (diffusers in bf16 with a
  channels-last UNet and VAE, as engine/speed.py) and for plain diffusers fp32, in this one
  process, interleaved, from the same prompt encodings, initial noise and Euler schedule;
- PSNR of OpenVINO's and the bf16 path's images against the fp32 image.

    <ov-env>/bin/python benchmarks/openvino_cpu.py [--size 256] [--steps 4,20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import torch  # noqa: E402

from _models import bench_cache, psnr  # noqa: E402

PROMPT = "a red fox in snow, detailed fur, golden hour"
NEGATIVE = "blurry, lowres"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", default="4,20")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="convert again even where a converted folder exists")
    args = parser.parse_args()
    step_counts = [int(s) for s in args.steps.split(",")]

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from optimum.intel import OVStableDiffusionPipeline

    # kakumei builds this folder (benchmarks/_models.sd15_random); this environment only reads it
    folder = bench_cache() / "sd15-random"
    if not (folder / "model_index.json").is_file():
        sys.exit(f"{folder} is missing: run benchmarks/engine_vs_diffusers.py in kakumei's environment first")
    ov_folder = bench_cache() / "sd15-random-openvino"
    if args.fresh and ov_folder.exists():
        shutil.rmtree(ov_folder)
    convert_s = None
    if not ov_folder.exists():
        start = time.perf_counter()
        exported = OVStableDiffusionPipeline.from_pretrained(folder, export=True, compile=False)
        exported.save_pretrained(ov_folder)
        convert_s = time.perf_counter() - start
        del exported

    start = time.perf_counter()
    ov = OVStableDiffusionPipeline.from_pretrained(ov_folder, compile=False)
    ov.reshape(batch_size=1, height=args.size, width=args.size, num_images_per_prompt=1)
    ov.compile()
    load_s = time.perf_counter() - start
    ov.scheduler = EulerDiscreteScheduler.from_config(ov.scheduler.config)
    ov.set_progress_bar_config(disable=True)

    def diffusers_pipe(dtype: torch.dtype, channels_last: bool):
        start = time.perf_counter()
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        if channels_last:
            for module in (pipe.unet, pipe.vae):
                module.to(memory_format=torch.channels_last)
        return pipe, time.perf_counter() - start

    ref, ref_load_s = diffusers_pipe(torch.float32, False)
    # kakumei's CPU path is this: diffusers' pipeline in bf16 with channels-last UNet and VAE
    # (engine/speed.py apply_fast_path); benchmarks/engine_vs_diffusers.py times the Engine itself.
    ours, ours_load_s = diffusers_pipe(torch.bfloat16, True)

    # One set of prompt encodings for every side: text encoders saved by a newer transformers
    # may not load into the older one optimum-intel pins (their random weights would differ).
    with torch.inference_mode():
        cond, uncond = ref.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)

    def noise(seed: int) -> torch.Tensor:
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn((1, 4, args.size // 8, args.size // 8), generator=g, dtype=torch.float32)

    def run(pipe, steps: int, seed: int):
        dtype = torch.bfloat16 if pipe is ours else torch.float32
        start = time.perf_counter()
        with torch.inference_mode():
            image = pipe(prompt_embeds=cond.to(dtype), negative_prompt_embeds=uncond.to(dtype), height=args.size,
                         width=args.size, num_inference_steps=steps, guidance_scale=7.0,
                         latents=noise(seed).to(dtype)).images[0]
        return time.perf_counter() - start, image

    for pipe in (ov, ref, ours):  # warm-up
        run(pipe, 2, 0)
    import openvino

    core = openvino.Core()
    print(f"size={args.size} rounds={args.rounds} cfg=7 sampler=Euler torch threads={torch.get_num_threads()} "
          f"openvino {openvino.__version__} CPU inference precision {core.get_property('CPU', 'INFERENCE_PRECISION_HINT')}")
    print(f"conversion (one-off, then cached on disk): {'cached' if convert_s is None else f'{convert_s:.1f} s'}")
    print(f"load: OpenVINO folder + compile {load_s:.1f} s, diffusers fp32 {ref_load_s:.1f} s, bf16 channels-last {ours_load_s:.1f} s")
    for steps in step_counts:
        t: dict[str, list[float]] = {"ov": [], "ref": [], "ours": []}
        q: dict[str, list[float]] = {"ov": [], "ours": []}
        for r in range(args.rounds):
            t_ov, i_ov = run(ov, steps, 1000 + r)
            t_ours, i_ours = run(ours, steps, 1000 + r)
            print(f"steps={steps} round {r}: OpenVINO {t_ov:.2f} s, bf16 {t_ours:.2f} s", flush=True)
            t_ref, i_ref = run(ref, steps, 1000 + r)
            t["ref"].append(t_ref)
            t["ov"].append(t_ov)
            t["ours"].append(t_ours)
            q["ov"].append(psnr(i_ref, i_ov))
            q["ours"].append(psnr(i_ref, i_ours))
            print(f"steps={steps} round {r}: fp32 {t_ref:.2f} s", flush=True)
        o, b, k = (statistics.median(t[n]) for n in ("ov", "ref", "ours"))
        print(f"steps={steps}: s/image OpenVINO {o:.2f}, bf16 channels-last (kakumei's path) {k:.2f}, "
              f"diffusers fp32 {b:.2f}; OpenVINO/kakumei {k / o:.2f}x, OpenVINO/fp32 {b / o:.2f}x, kakumei/fp32 {b / k:.2f}x")
        print(f"  PSNR vs fp32 (min / median): OpenVINO {min(q['ov']):.1f} / {statistics.median(q['ov']):.1f} dB, "
              f"bf16 channels-last {min(q['ours']):.1f} / {statistics.median(q['ours']):.1f} dB")
        if convert_s is not None:
            first_ov = convert_s + load_s + o
            first_ours = ours_load_s + k
            print(f"  first image of a fresh install: OpenVINO {first_ov:.1f} s (conversion + load + image), "
                  f"kakumei's path {first_ours:.1f} s (load + image)")

if __name__ == "__main__":
    main()
