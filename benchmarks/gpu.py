"""Every GPU benchmark in one prepared run, for a machine with a CUDA GPU:

    python benchmarks/gpu.py              # all parts, about 10 minutes on one H100-class GPU
    python benchmarks/gpu.py --dry-run    # anywhere: print the plan, check the imports

1. `sd15`: the SD 1.5 architecture at 512x512, CFG 7, Euler, 20 steps: kakumei's Engine
   (float16 with its fast path, and with `compile` = torch.compile plus CUDA graphs) against
   plain diffusers float16, rounds interleaved; it/s, seconds per image and the PSNR of
   kakumei's image against diffusers' image of the same request and seed.
2. `sdxl`: the same at 1024x1024 with the SDXL architecture.
3. `black`: SDXL in float16 must not decode black or NaN images: kakumei's SDXL pipeline
   upcasts the VAE where its config asks for it (`force_upcast`); the part checks every
   image's pixel spread and that no NaN-image error was raised.
4. `serve`: shared-server throughput: a real `kakumei serve` with its local worker on the
   GPU, SDXL at 1024x1024 and 20 steps, 8 keyless users on 8 loopback addresses each keeping
   one job queued; images per second per GPU once the queue is full (MLPerf's published
   SDXL server figure is 2.26 per H100, for comparison only: other sampler, other weights).
5. `tests`: the test suite once on the GPU machine (`-m "not browser and not postgres"`).

Models have the full-size architectures with random weights (speed does not depend on the
values), built once into the benchmark cache (KAKUMEI_BENCH_CACHE). Random weights do not
reproduce the trained SDXL VAE's float16 overflow; part 3 checks that the upcast path runs
and gives images, and on a machine with the real SDXL weights, `--sdxl-model PATH` runs
parts 2-4 on them instead.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# benchmarks/queue.py would shadow the standard library's queue: this folder goes last.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from _models import bench_cache, psnr, sd15_random, sdxl_random  # noqa: E402

PARTS = ("sd15", "sdxl", "black", "serve", "tests")
PROMPT = "a red fox in snow, detailed fur, golden hour"
NEGATIVE = "blurry, lowres"
USERS = 8


def plain_diffusers(folder: Path, xl: bool):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    extra = {} if xl else {"safety_checker": None}
    pipe = cls.from_pretrained(folder, dtype=torch.float16, local_files_only=True, **extra).to("cuda")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run(size: int, steps: int, seed: int):
        gen = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            return pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
                        guidance_scale=7.0, generator=gen).images[0]

    return run, lambda: None


def kakumei_engine(folder: Path, compile_model: bool):
    from kakumei.config import load_settings
    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest

    settings = load_settings({"model": str(folder), "device": "cuda", "compile": compile_model},
                             environ={"KAKUMEI_HOME": str(bench_cache() / "home-gpu"), "HF_HUB_OFFLINE": "1"})
    engine = Engine(settings)

    def run(size: int, steps: int, seed: int):
        req = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=steps,
                                cfg_scale=7.0, seed=seed, sampler_name="Euler")
        return engine.generate(req).images[0].image

    def close() -> None:
        engine._cache = type(engine._cache)(1)  # drop the pipeline so the next side has the memory

    return run, close


def timed(run, size: int, steps: int, seed: int):
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    image = run(size, steps, seed)
    torch.cuda.synchronize()
    return time.perf_counter() - start, image


def side_by_side(name: str, folder: Path, xl: bool, size: int, steps: int, rounds: int) -> None:
    """Plain diffusers fp16, kakumei, kakumei compiled: each loaded once, rounds interleaved."""
    import gc

    import torch

    sides = {"diffusers fp16": plain_diffusers(folder, xl), "kakumei": kakumei_engine(folder, False),
             "kakumei compile": kakumei_engine(folder, True)}
    times: dict[str, list[float]] = {s: [] for s in sides}
    images: dict[str, list] = {s: [] for s in sides}
    for side, (run, _) in sides.items():  # warm-up: kernel choice, allocation, compilation
        started = time.perf_counter()
        timed(run, size, steps, 0)
        print(f"  warm-up {side}: {time.perf_counter() - started:.1f} s", flush=True)
    for r in range(rounds):
        for side, (run, _) in sides.items():
            t, image = timed(run, size, steps, 1000 + r)
            times[side].append(t)
            images[side].append(image)
    base = statistics.median(times["diffusers fp16"])
    print(f"\n[{name}] {size}x{size}, {steps} steps, CFG 7, Euler, {rounds} rounds, {torch.cuda.get_device_name()}")
    print(f"  {'':<18}{'s/image':>9}{'it/s':>8}{'speed-up':>10}{'spread s':>16}{'PSNR dB':>9}")
    for side, t in times.items():
        med = statistics.median(t)
        quality = min(psnr(a, b) for a, b in zip(images["diffusers fp16"], images[side]))
        print(f"  {side:<18}{med:>9.3f}{steps / med:>8.2f}{base / med:>9.2f}x{min(t):>8.3f}..{max(t):<7.3f}"
              f"{quality:>9.1f}")
    for _, close in sides.values():
        close()
    del sides
    gc.collect()
    torch.cuda.empty_cache()


def no_black(folder: Path, size: int, steps: int) -> None:
    import numpy as np

    from kakumei.errors import NonFiniteImage

    run, close = kakumei_engine(folder, False)
    spreads = []
    for seed in range(4):
        try:
            image = np.asarray(run(size, steps, seed), dtype=np.float64)
        except NonFiniteImage as exc:
            print(f"\n[black] FAILED: seed {seed}: {exc}")
            return
        spreads.append(float(image.std()))
    black = [s for s in spreads if s < 1.0]
    print(f"\n[black] SDXL float16 {size}x{size}: {len(spreads)} images, pixel std {min(spreads):.1f}..{max(spreads):.1f}; "
          + ("ok: no black image" if not black else f"FAILED: {len(black)} black"))
    close()


def serve_throughput(folder: Path, size: int, steps: int, seconds: float) -> None:
    import httpx

    home = Path(tempfile.mkdtemp(prefix="kakumei-gpu-serve-"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    env = {**os.environ, "KAKUMEI_HOME": str(home), "KAKUMEI_MODEL": str(folder), "HF_HUB_OFFLINE": "1",
           "KAKUMEI_DEVICE": "cuda"}
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "kakumei.cli", "serve", "--fd", str(sock.fileno())], env=env,
                            stdout=log, stderr=subprocess.STDOUT, pass_fds=[sock.fileno()])
    done: list[float] = []
    stop = threading.Event()
    errors: list[str] = []

    def user(i: int) -> None:
        # Each user from its own loopback address: the server tells keyless people by address.
        client = httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=f"127.0.0.{10 + i}"), timeout=600)
        body = {"prompt": f"{PROMPT}, variation {i}", "negative_prompt": NEGATIVE, "width": size, "height": size,
                "steps": steps, "cfg_scale": 7.0, "sampler_name": "Euler", "seed": i}
        pending: list[str] = []
        while not stop.is_set():
            while len(pending) < 2:  # one running or next, one queued behind it
                answer = client.post("/api/v1/jobs", json=body)
                if answer.status_code == 429:
                    time.sleep(1.0)
                    continue
                if answer.status_code != 201:
                    errors.append(f"user {i}: {answer.status_code} {answer.text[:200]}")
                    return
                pending.append(answer.json()["id"])
            answer = client.get(f"/api/v1/jobs/{pending[0]}")
            if answer.status_code == 429:  # the server's per-address rate limit: poll slower
                time.sleep(1.0)
                continue
            state = answer.json()
            if state["state"] == "succeeded":
                done.append(time.monotonic())
                pending.pop(0)
            elif state["state"] in ("failed", "cancelled"):
                errors.append(f"user {i}: job {state['state']}: {state.get('error')}")
                return
            else:
                time.sleep(0.2)

    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"kakumei serve did not start:\n{(home / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.2)
        threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(USERS)]
        for t in threads:
            t.start()
        # The first images pay for loading the model: count from the first finished image on.
        while not done and not errors and proc.poll() is None:
            time.sleep(0.2)
        start, first = time.monotonic(), len(done)
        time.sleep(seconds)
        stop.set()
        count = len(done) - first
        elapsed = time.monotonic() - start
        for t in threads:
            t.join(5)
        print(f"\n[serve] SDXL architecture {size}x{size}, {steps} steps, {USERS} users, worker_batch_jobs auto: "
              f"{count} images in {elapsed:.0f} s = {count / elapsed:.2f} images/s per GPU (MLPerf: 2.26 per H100)")
        for line in errors[:5]:
            print(f"  error: {line}")
    finally:
        proc.terminate()
        proc.wait(60)
        sock.close()


def run_tests() -> None:
    print("\n[tests] pytest on the GPU machine", flush=True)
    status = subprocess.call([sys.executable, "-m", "pytest", "tests", "-q", "-x", "-p", "no:cacheprovider",
                              "-m", "not browser and not postgres"])
    print(f"[tests] exit status {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-seconds", type=float, default=90.0, help="how long the serve part counts images")
    parser.add_argument("--sdxl-model", type=Path, help="a diffusers SDXL folder to use instead of random weights")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check the imports; no GPU needed")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")

    import torch

    print(f"parts: {', '.join(parts)}; {args.steps} steps, {args.rounds} rounds; "
          f"models in {bench_cache()}; torch {torch.__version__}")
    if args.dry_run:
        import diffusers  # noqa: F401 - the imports the real run needs
        import httpx  # noqa: F401

        import kakumei.engine.pipeline  # noqa: F401

        print(f"dry run: imports ok; CUDA available: {torch.cuda.is_available()}")
        return
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run this on a GPU machine (or --dry-run to check the plan)")
    from kakumei.engine.devices import quiet_libraries

    quiet_libraries()
    xl = args.sdxl_model or (sdxl_random() if {"sdxl", "black", "serve"} & set(parts) else None)
    if "sd15" in parts:
        side_by_side("sd15", sd15_random(), False, 512, args.steps, args.rounds)
    if "sdxl" in parts:
        side_by_side("sdxl", xl, True, 1024, args.steps, args.rounds)
    if "black" in parts:
        no_black(xl, 1024, args.steps)
    if "serve" in parts:
        serve_throughput(xl, 1024, args.steps, args.serve_seconds)
    if "tests" in parts:
        run_tests()
    print(json.dumps({"done": parts}))


if __name__ == "__main__":
    main()
