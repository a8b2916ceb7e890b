"""Output files: `00012-<seed>.png`, numbered after the highest number already in the folder,
created exclusively so that two writers never overwrite each other."""

from __future__ import annotations

import os
import re
from pathlib import Path

_NUMBERED = re.compile(r"^(\d{5,})-")


def next_number(folder: Path) -> int:
    highest = -1
    if folder.is_dir():
        for entry in os.scandir(folder):
            match = _NUMBERED.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def save_png(folder: Path, seed: int, png: bytes) -> Path:
    """Write `png` as the next numbered file in `folder`; never overwrites."""
    folder.mkdir(parents=True, exist_ok=True)
    number = next_number(folder)
    while True:
        path = folder / f"{number:05d}-{seed}.png"
        try:
            with path.open("xb") as fh:  # exclusive create: fails instead of overwriting
                fh.write(png)
            return path
        except FileExistsError:
            number += 1
