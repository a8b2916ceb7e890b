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
from kakumei.schemas import (
    HR_UPSCALERS,
    INPAINTING_FILLS,
    MAX_INIT_IMAGES,
    MAX_INPUT_BYTES,
    MAX_SIDE,
    RESIZE_MODES,
    SAMPLER_NAMES,
    SCHEDULE_NAMES,
)

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
    "denoising_strength": "denoising_strength",
    "mask_blur": "mask_blur",
    "inpaint_full_res_padding": "inpaint_full_res_padding",
    "hr_scale": "hr_scale",
    "hr_upscaler": "hr_upscaler",
    "hr_steps": "hr_second_pass_steps",
    "refiner": "refiner_checkpoint",
    "refiner_switch_at": "refiner_switch_at",
}
# On/off flags: given, they set the field; absent, the default (or the --from image's) holds.
_SWITCH_FLAGS = {
    "inpaint_full_res": ("inpaint_full_res", True),
    "invert_mask": ("inpainting_mask_invert", 1),
    "hires": ("enable_hr", True),
}


def _engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and hardware")
    group.add_argument("--model", "-m", help="hub id, diffusers folder, or kakumei:tiny (default: KAKUMEI_MODEL or SD 1.5)")
    group.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], help="default: CUDA, then MPS, then CPU")
    group.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="default: float16 on a GPU, float32 on the CPU")
    group.add_argument("--low-memory", action="store_true", default=None, help="attention slicing, VAE tiling and CPU offload")


def _choice(names: tuple[str, ...], what: str) -> Any:
    """A flag value given by name (any case) or by A1111's number; the number is what the
    request holds."""

    def parse(text: str) -> int:
        if text.isdigit() and int(text) < len(names):
            return int(text)
        for i, name in enumerate(names):
            if text.strip().lower() == name.lower():
                return i
        raise argparse.ArgumentTypeError(
            f"unknown {what} {text!r}; one of: " + ", ".join(f"{n!r} ({i})" for i, n in enumerate(names)))

    return parse


def _image_flags(parser: argparse.ArgumentParser) -> None:
    img = parser.add_argument_group("img2img and inpainting")
    img.add_argument("--init-image", "-i", action="append", type=Path, metavar="IMAGE",
                     help=f"start from this picture (img2img); repeat for up to {MAX_INIT_IMAGES}, image i uses init image i mod n")
    img.add_argument("--denoising-strength", type=float, help="0 keeps the input, 1 replaces it (default 0.75)")
    img.add_argument("--resize-mode", type=_choice(RESIZE_MODES, "resize mode"),
                     help="how an input of another size is fitted: " + ", ".join(RESIZE_MODES) + " (default Just resize)")
    img.add_argument("--mask", type=Path, metavar="IMAGE", help="inpainting: white is repainted, black kept (needs --init-image)")
    img.add_argument("--mask-blur", type=int, help="pixels of blur on the mask edge (default 4)")
    img.add_argument("--inpainting-fill", type=_choice(INPAINTING_FILLS, "masked content"),
                     help="what the masked area starts from: " + ", ".join(INPAINTING_FILLS) + " (default original)")
    img.add_argument("--inpaint-full-res", action="store_true", default=None, help="repaint only the masked area, at full resolution")
    img.add_argument("--inpaint-full-res-padding", type=int, help="pixels around the mask for --inpaint-full-res (default 32)")
    img.add_argument("--invert-mask", action="store_true", default=None, help="repaint the black part of the mask instead")
    hr = parser.add_argument_group("hires fix and refiner")
    hr.add_argument("--hires", action="store_true", default=None, help="generate at the size given, upscale, then a second pass")
    hr.add_argument("--hr-scale", type=float, help="upscale factor, 1 to 4 (default 2)")
    hr.add_argument("--hr-upscaler", help=f"one of: {', '.join(HR_UPSCALERS)} (default Latent)")
    hr.add_argument("--hr-steps", type=int, help="steps of the second pass (default: as --steps)")
    hr.add_argument("--hr-denoising-strength", type=float, help="how much the second pass changes (default 0.75)")
    hr.add_argument("--refiner", metavar="MODEL", help="an SDXL refiner that finishes the last steps")
    hr.add_argument("--refiner-switch-at", type=float, help="fraction of the steps after which the refiner takes over (default 0.8)")


def _read_image(path: Path, flag: str) -> str:
    """An input picture as the request carries it (base64 of the file); its content is
    checked by the request's own validation."""
    import base64

    try:
        size = path.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise KakumeiError(f"{flag} {path} is {size // (1024 * 1024)} MiB; the most is {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
        data = path.read_bytes()
    except IsADirectoryError:
        raise KakumeiError(f"{flag} {path} is a folder; give a PNG, JPEG or WebP file") from None
    except FileNotFoundError:
        raise KakumeiError(f"{flag} {path}: no such file") from None
    except PermissionError:
        raise KakumeiError(f"{flag} {path}: permission denied") from None
    return base64.b64encode(data).decode("ascii")


def _image_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields that the picture flags give."""
    values: dict[str, Any] = {}
    if args.init_image:
        if len(args.init_image) > MAX_INIT_IMAGES:
            raise KakumeiError(f"--init-image was given {len(args.init_image)} times; the most is {MAX_INIT_IMAGES}")
        values["init_images"] = [_read_image(p, "--init-image") for p in args.init_image]
    if args.mask is not None:
        values["mask"] = _read_image(args.mask, "--mask")
    if args.resize_mode is not None:
        values["resize_mode"] = args.resize_mode
    if args.inpainting_fill is not None:
        values["inpainting_fill"] = args.inpainting_fill
    for flag, (field, value) in _SWITCH_FLAGS.items():
        if getattr(args, flag):
            values[field] = value
    if args.hr_denoising_strength is not None:
        if args.denoising_strength is not None and args.denoising_strength != args.hr_denoising_strength:
            raise KakumeiError("--denoising-strength and --hr-denoising-strength set the same value; give one")
        values["denoising_strength"] = args.hr_denoising_strength
    return values


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
    p.add_argument("--no-translate", action="store_true", default=None,
                   help="send Japanese in the prompts to the text encoder as written (default: translate it to English)")
    _image_flags(p)
    p.add_argument("--from", dest="from_image", metavar="IMAGE", help="regenerate a PNG from its metadata; other flags override its fields")
    p.add_argument("--out", "-o", type=Path, help="output folder (default: <data dir>/outputs)")
    _engine_flags(p)
    p.set_defaults(func=cmd_generate, exit_without_teardown=True)


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
    from kakumei.schemas import check_request, validate_request

    overrides = {field: getattr(args, flag) for flag, field in _REQUEST_FLAGS.items() if getattr(args, flag) is not None}
    overrides.update(_image_overrides(args))
    if args.prompt is not None:
        overrides["prompt"] = args.prompt
    if args.no_translate:
        overrides["translate"] = False
    if args.from_image is None:
        if args.prompt is None:
            raise KakumeiError("give a prompt, e.g. kakumei generate \"a red fox in snow\", or --from IMAGE")
        request = _translated(validate_request({**overrides, "model": settings.model}), settings)
        check_request(request)
        return request, None
    base, index = read_metadata(args.from_image).request_and_index()
    data = base.model_dump()
    if args.model:
        data["model"] = args.model
    elif data.get("model") is None:
        data["model"] = settings.model
    if any(field in overrides for field in ("prompt", "negative_prompt", "translate")):
        # A new prompt is translated afresh; the image's recorded pair was for its old one.
        # Without one, the recorded English is used as it is: the same bytes come out.
        for field in ("prompt_original", "negative_prompt_original", "untranslated"):
            data.pop(field, None)
    data.update(overrides)
    request = _translated(validate_request(data), settings)
    check_request(request)
    # Regenerate just that image when the batches are laid out as before; a changed seed,
    # batch size or count asks for a new set of images.
    same_layout = all(getattr(request, f) == getattr(base, f) for f in ("seed", "batch_size", "n_iter"))
    return request, (index if same_layout else None)


def _translated(request: Any, settings: Settings) -> Any:
    """The request with Japanese in its prompts in English, said on stderr when it changed."""
    from kakumei.translate import translate_request, translator_for, untranslated_note

    translated = translate_request(request, translator_for(settings.translator))
    if translated is not request:
        if translated.prompt_original is not None:
            print(f"translated: {translated.prompt}", file=sys.stderr)
        if translated.negative_prompt_original is not None:
            print(f"translated negative prompt: {translated.negative_prompt}", file=sys.stderr)
        if translated.untranslated:
            print(f"note: {untranslated_note(translated.untranslated)}", file=sys.stderr)
    return translated


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
