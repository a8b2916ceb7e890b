"""kakumei generate PROMPT | info IMAGE: generation on this machine, and reading a PNG's recipe."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from kakumei.cli.common import EXIT_INTERRUPTED
from kakumei.config import Settings
from kakumei.errors import GenerationCancelled, KakumeiError, ModelNotFound
from kakumei.schemas import MAX_SIDE, SAMPLER_NAMES, SCHEDULE_NAMES

# CLI flag -> GenerationRequest field, for the flags that override `--from`.
_REQUEST_FLAGS = {
    "negative_prompt": "negative_prompt",
    "steps": "steps",
    "cfg_scale": "cfg_scale",
    "width": "width",
    "height": "height",
    "seed": "seed",
    "batch_size": "batch_size",
    "n_iter": "n_iter",
    "sampler": "sampler_name",
    "scheduler": "scheduler",
    "clip_skip": "clip_skip",
}


def _engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and hardware")
    group.add_argument("--model", "-m", help="hub id, diffusers folder, or kakumei:tiny (default: KAKUMEI_MODEL or SD 1.5)")
    group.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], help="default: CUDA, then MPS, then CPU")
    group.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="default: float16 on a GPU, float32 on the CPU")
    group.add_argument("--low-memory", action="store_true", default=None, help="attention slicing, VAE tiling and CPU offload")


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate images from a prompt", description="Generate images from a text prompt.")
    p.add_argument("prompt", nargs="?", help="what to draw (may be omitted with --from)")
    p.add_argument("--negative-prompt", "-n", help="what to avoid")
    p.add_argument("--steps", type=int, help="denoising steps (default 20)")
    p.add_argument("--cfg-scale", type=float, help="prompt guidance (default 7)")
    p.add_argument("--width", "-W", type=int, help=f"multiple of 8, up to {MAX_SIDE} (default 512)")
    p.add_argument("--height", "-H", type=int, help=f"multiple of 8, up to {MAX_SIDE} (default 512)")
    p.add_argument("--seed", "-s", type=int, help="-1 for random (default); image i uses seed + i")
    p.add_argument("--batch-size", "-b", type=int, help="images generated together (default 1)")
    p.add_argument("--n-iter", type=int, help="batches, one after the other (default 1)")
    p.add_argument("--sampler", help=f"one of: {', '.join(SAMPLER_NAMES)} (default Euler a)")
    p.add_argument("--scheduler", help=f"schedule type, one of: {', '.join(SCHEDULE_NAMES)}")
    p.add_argument("--clip-skip", type=int, help="1 = last CLIP layer (default), 2 = the one before")
    p.add_argument("--from", dest="from_image", metavar="IMAGE", help="regenerate a PNG from its metadata; other flags override its fields")
    p.add_argument("--out", "-o", type=Path, help="output folder (default: <data dir>/outputs)")
    _engine_flags(p)
    p.set_defaults(func=cmd_generate)


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="print the generation metadata of a PNG")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="print only kakumei's JSON metadata")
    p.set_defaults(func=cmd_info)


def register(sub: Any) -> None:
    """Add `generate` and `info` to the CLI's subparsers."""
    _add_generate(sub)
    _add_info(sub)


class _CtrlC:
    """First Ctrl-C: stop after the current step and keep finished images. Second: quit now."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __enter__(self) -> _CtrlC:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        print("\nstopping after this step (Ctrl-C again to quit now)", file=sys.stderr)


def _request_for(args: argparse.Namespace, settings: Settings) -> tuple[Any, int | None]:
    """The request to run, and (for --from) the index of the one image to regenerate."""
    from kakumei.engine.metadata import read_metadata
    from kakumei.schemas import validate_request

    overrides = {field: getattr(args, flag) for flag, field in _REQUEST_FLAGS.items() if getattr(args, flag) is not None}
    if args.prompt is not None:
        overrides["prompt"] = args.prompt
    if args.from_image is None:
        if args.prompt is None:
            raise KakumeiError("give a prompt, e.g. kakumei generate \"a red fox in snow\", or --from IMAGE")
        return validate_request({**overrides, "model": settings.model}), None
    base, index = read_metadata(args.from_image).request_and_index()
    data = base.model_dump()
    if args.model:
        data["model"] = args.model
    elif data.get("model") is None:
        data["model"] = settings.model
    data.update(overrides)
    request = validate_request(data)
    # Regenerate just that image when the batches are laid out as before; a changed seed,
    # batch size or count asks for a new set of images.
    same_layout = all(getattr(request, f) == getattr(base, f) for f in ("seed", "batch_size", "n_iter"))
    return request, (index if same_layout else None)


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    # The request is checked before torch is imported (seconds), so a bad flag is refused at once.
    request, keep = _request_for(args, settings)

    from tqdm import tqdm

    from kakumei.engine.devices import quiet_libraries
    from kakumei.engine.models import missing_model
    from kakumei.engine.pipeline import Engine, GeneratedImage, StepProgress
    from kakumei.engine.tiny import TINY_REF
    from kakumei.outputs import save_png

    quiet_libraries()
    engine = Engine(settings)
    source = engine.resolve_model_name(request.model)
    if source.ref == TINY_REF:
        print("note: kakumei:tiny is a random-weight test model; its images are noise", file=sys.stderr)
    out_dir = settings.outputs
    saved: list[Path] = []
    only_batch = None if keep is None else keep // request.batch_size
    batches = request.n_iter if only_batch is None else 1
    missing = missing_model(source, settings.hf_offline)
    if missing is not None and settings.hf_offline:
        raise ModelNotFound(missing)
    verb = "downloading" if missing is not None else "loading"
    print(f"{verb} {source.ref} ...", file=sys.stderr)
    # Loaded before the progress bar, so a missing model is a message, not a bar stuck at 0%;
    # generate() takes it from the engine's cache.
    engine.load(request.model)
    bar = tqdm(total=request.steps * batches, unit="step", desc="generating", file=sys.stderr, leave=False)

    def on_step(p: StepProgress) -> None:
        done_batches = 0 if only_batch is not None else p.image_offset // request.batch_size
        bar.total = p.total * batches
        bar.n = done_batches * p.total + p.step
        bar.refresh()

    def on_image(image: GeneratedImage) -> None:
        if keep is not None and image.index != keep:
            return
        path = save_png(out_dir, image.seed, image.png)
        saved.append(path)
        bar.write(str(path))

    try:
        with _CtrlC() as ctrl_c:
            engine.generate(
                request, on_step=on_step, cancelled=ctrl_c.event.is_set, on_image=on_image, only_batch=only_batch
            )
    except GenerationCancelled:
        bar.close()
        print(f"stopped: kept {len(saved)} finished image(s)", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    print(f"{len(saved)} image(s) in {out_dir}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    from kakumei.engine.metadata import read_metadata

    meta = read_metadata(args.image)
    if args.json:
        print(json.dumps(meta.kakumei or {}, indent=2, ensure_ascii=False))
        return 0
    if meta.parameters:
        print(meta.parameters)
    if meta.kakumei:
        print()
        print(json.dumps(meta.kakumei, indent=2, ensure_ascii=False))
    return 0
