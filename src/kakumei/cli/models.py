"""kakumei models list | pull ID | import PATH | remove NAME: arguments and printing; what is
in the models folder, and adding or removing, is engine/model_files.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kakumei.config import Settings
from kakumei.engine.model_files import import_path, list_models, remove_model
from kakumei.errors import KakumeiError, ModelNotFound


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    entries = list_models(settings, with_hashes=not args.no_hashes)
    if args.json:
        print(json.dumps([{**e.__dict__, "path": str(e.path)} for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no models in {settings.models_dir}; add one with kakumei models import PATH or pull ID", file=sys.stderr)
        return 0
    print(f"{'NAME':<32} {'KIND':<10} {'ARCHITECTURE':<14} {'SIZE':>9}  HASH")
    for e in entries:
        print(f"{e.name[:32]:<32} {e.kind:<10} {e.architecture:<14} {_human(e.size):>9}  {e.sha256[:10]}")
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    for path in import_path(Path(args.path), settings, args.link):
        print(path)
    return 0


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    print(f"removed {remove_model(args.name, settings)}")
    return 0


def cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    """Download a hub model into the Hugging Face cache (progress bars from huggingface_hub)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    if settings.hf_offline:
        raise KakumeiError("kakumei is offline (HF_HUB_OFFLINE); pull where there is internet, or import a file")
    try:
        folder = snapshot_download(
            args.id,
            allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"],
            ignore_patterns=["*.fp16.safetensors"] if not args.fp16 else None,
        )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFound(f"could not pull {args.id!r}: {str(exc).splitlines()[0]}") from None
    print(folder)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("models", help="list, pull, import and remove models, LoRAs and embeddings")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="names, kinds, architectures, sizes and hashes")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--no-hashes", action="store_true", help="skip hashing files not hashed before")
    ls.set_defaults(func=cmd_list)
    pull = sub.add_parser("pull", help="download a model from the Hugging Face hub")
    pull.add_argument("id", help="hub id, e.g. stabilityai/sd-turbo")
    pull.add_argument("--fp16", action="store_true", help="also fetch fp16 weight files")
    pull.set_defaults(func=cmd_pull)
    imp = sub.add_parser("import", help="add a checkpoint, LoRA, embedding, diffusers folder or A1111/ComfyUI folder")
    imp.add_argument("path")
    imp.add_argument("--link", action="store_true", help="link instead of copying (keeps one copy on disk)")
    imp.set_defaults(func=cmd_import)
    rm = sub.add_parser("remove", help="delete a model from the models folder")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)
