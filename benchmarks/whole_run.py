"""`kakumei generate` as a whole process against a plain-diffusers script as a process.

What a person waits for when they run one command: imports, loading the weights, the
denoising loop, the VAE decode and writing the PNG. Both sides get the same request (the SD
1.5 architecture with random weights saved once as a local diffusers folder, Euler, CFG 7,
same seed); plain diffusers runs in fp32 as users run it out of the box. Runs alternate
A B A B so that a busy machine slows both alike; medians and the spread (min..max) are
printed with the PSNR of kakumei's image against the fp32 image of the same request.

The `kakumei` command sets OMP_WAIT_POLICY=PASSIVE for itself (torch's CPU threads sleep
between operations instead of spinning; most of the CPU-time gain on a CPU); plain diffusers
runs with OpenMP's default. `--plain-env OMP_WAIT_POLICY=PASSIVE` gives the plain script the
same policy, to see how much of the difference that one setting is.

Peak memory is the child's maximum resident set size as the kernel counts it
(`os.wait4`'s ru_maxrss), which includes mapped file pages.

    python benchmarks/whole_run.py [--steps 4 20] [--rounds 3] [--size 256]
    python benchmarks/whole_run.py --sides kakumei --steps 4 --rounds 1   # one side
    python benchmarks/whole_run.py --sides diffusers,kakumei,before --before-src OLD/src  # and an older kakumei
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# benchmarks/queue.py would shadow the standard library's queue: this folder goes last.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from _models import bench_cache, psnr, sd15_random  # noqa: E402

PROMPT = "a red fox in snow, detailed fur, golden hour"
NEGATIVE = "blurry, lowres"
SEED = 1234

# The plain-diffusers side: what a user writes after reading diffusers' quickstart, with the
# scheduler kakumei's "Euler" maps to, so that both sides make the same image.
PLAIN_SCRIPT = r'''
import sys, torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
folder, size, steps, seed, out, prompt, negative = sys.argv[1:8]
pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
gen = torch.Generator("cpu").manual_seed(int(seed))
with torch.inference_mode():
    image = pipe(prompt, negative_prompt=negative, height=int(size), width=int(size),
                 num_inference_steps=int(steps), guidance_scale=7.0, generator=gen).images[0]
image.save(out)
'''


def run_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system, all threads) and peak RSS in bytes of one
    child process. CPU seconds are what the run costs with the cores to itself: on a machine
    shared with other work they vary much less than the wall clock."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{cmd[:3]} failed ({proc.returncode}):\n{err.decode(errors='replace')[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024  # Linux reports kilobytes


def plain_cmd(folder: Path, size: int, steps: int, out: Path) -> list[str]:
    return [sys.executable, "-c", PLAIN_SCRIPT, str(folder), str(size), str(steps), str(SEED), str(out), PROMPT, NEGATIVE]


def kakumei_cmd(folder: Path, size: int, steps: int, out_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "kakumei.cli", "generate", PROMPT, "-n", NEGATIVE, "--model", str(folder),
            "--steps", str(steps), "-W", str(size), "-H", str(size), "--seed", str(SEED), "--sampler", "Euler",
            "--cfg-scale", "7", "--out", str(out_dir), *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 20])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sides", default="diffusers,kakumei",
                        help="comma-separated, of diffusers, kakumei, before (the first two give the ratios)")
    parser.add_argument("--kakumei-arg", action="append", default=[], help="extra flag for kakumei generate")
    parser.add_argument("--kakumei-src", type=Path, metavar="DIR",
                        help="run the 'kakumei' side from this source tree instead of the installed package")
    parser.add_argument("--before-src", type=Path, metavar="DIR",
                        help="also run kakumei from this source tree (e.g. `git archive` of an older commit) as a "
                             "third side, 'before'")
    parser.add_argument("--plain-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the plain-diffusers side only")
    parser.add_argument("--fresh-home", action="store_true",
                        help="a new kakumei data dir per run: every run pays the first run's hashing")
    args = parser.parse_args()

    folder = sd15_random()
    work = Path(tempfile.mkdtemp(prefix="whole-run-", dir=bench_cache()))
    home = bench_cache() / "home-whole-run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KAKUMEI_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "before" in sides and args.before_src is None:
        parser.error("the 'before' side needs --before-src")
    print(f"model: SD 1.5 architecture, random weights; {args.size}x{args.size}, Euler, CFG 7, seed {SEED}; "
          f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start")
    try:
        for steps in args.steps:
            times: dict[str, list[float]] = {s: [] for s in sides}
            cpu: dict[str, list[float]] = {s: [] for s in sides}
            peaks: dict[str, list[int]] = {s: [] for s in sides}
            quality: list[float] = []
            for r in range(args.rounds):
                images = {}
                for side in sides:  # A B A B: each round runs both, one after the other
                    out = work / f"{side}-{steps}-{r}"
                    out.mkdir()
                    if side == "diffusers":
                        cmd = plain_cmd(folder, args.size, steps, out / "image.png")
                    else:
                        if args.fresh_home:
                            shutil.rmtree(home, ignore_errors=True)
                        cmd = kakumei_cmd(folder, args.size, steps, out, args.kakumei_arg)
                    side_env = env
                    if side == "diffusers" and args.plain_env:
                        side_env = {**env, **dict(kv.split("=", 1) for kv in args.plain_env)}
                    src = {"before": args.before_src, "kakumei": args.kakumei_src}.get(side)
                    if src is not None:
                        side_env = {**env, "PYTHONPATH": str(src.resolve())}
                    wall, cpu_s, peak = run_process(cmd, side_env)
                    times[side].append(wall)
                    cpu[side].append(cpu_s)
                    peaks[side].append(peak)
                    images[side] = next(out.glob("*.png"))
                    print(f"  steps={steps} round={r} {side:<9} {wall:7.2f} s wall {cpu_s:7.2f} s CPU  peak {peak / 2**30:5.2f} GiB  "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
                from PIL import Image

                ours = "kakumei" if "kakumei" in images else "before"
                if "diffusers" in images and ours in images:
                    quality.append(psnr(Image.open(images["diffusers"]).convert("RGB"),
                                        Image.open(images[ours]).convert("RGB")))
                    if "before" in images and "kakumei" in images:
                        same = Image.open(images["before"]).tobytes() == Image.open(images["kakumei"]).tobytes()
                        print(f"  kakumei's pixels {'equal' if same else 'DIFFER from'} the 'before' side's", flush=True)
            print(f"steps={steps} rounds={args.rounds}")
            for side in sides:
                t, p = times[side], peaks[side]
                c = cpu[side]
                print(f"  {side:<9} wall median {statistics.median(t):6.2f} s (spread {min(t):.2f}..{max(t):.2f}), "
                      f"CPU median {statistics.median(c):6.2f} s (spread {min(c):.2f}..{max(c):.2f}), "
                      f"peak RSS median {statistics.median(p) / 2**30:.2f} GiB (spread {min(p) / 2**30:.2f}..{max(p) / 2**30:.2f})")
            for other in (s for s in sides if s == "before" and "diffusers" in sides):
                print(f"  speed-up diffusers/before: wall {statistics.median(times['diffusers']) / statistics.median(times[other]):.2f}x, "
                      f"CPU {statistics.median(cpu['diffusers']) / statistics.median(cpu[other]):.2f}x, "
                      f"peak memory before/diffusers: {statistics.median(peaks[other]) / statistics.median(peaks['diffusers']):.2f}x")
            if "diffusers" in sides and "kakumei" in sides:
                ratios = [b / k for b, k in zip(times["diffusers"], times["kakumei"])]
                mem = [k / b for b, k in zip(peaks["diffusers"], peaks["kakumei"])]
                cpu_ratios = [b / k for b, k in zip(cpu["diffusers"], cpu["kakumei"])]
                print(f"  speed-up diffusers/kakumei: wall {statistics.median(times['diffusers']) / statistics.median(times['kakumei']):.2f}x "
                      f"(per round {min(ratios):.2f}..{max(ratios):.2f}x), "
                      f"CPU {statistics.median(cpu['diffusers']) / statistics.median(cpu['kakumei']):.2f}x "
                      f"(per round {min(cpu_ratios):.2f}..{max(cpu_ratios):.2f}x)")
                print(f"  peak memory kakumei/diffusers: {statistics.median(peaks['kakumei']) / statistics.median(peaks['diffusers']):.2f}x "
                      f"(per round {min(mem):.2f}..{max(mem):.2f})")
            if quality:
                print(f"  PSNR {ours} vs fp32 image: min {min(quality):.1f} dB, median {statistics.median(quality):.1f} dB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end (2 cores shared: figures are noisy)")


if __name__ == "__main__":
    main()
