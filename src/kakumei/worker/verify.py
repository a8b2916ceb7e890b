"""Judge a worker's images by re-running its job: the regeneration and the comparison.

Honest workers agree up to floating-point noise, so a trusted engine re-runs the request with
the seed the worker reported and compares each image by perceptual distance
(`perceptual.py`). Which jobs are checked, and what the verdict means for the worker's record
and credit, is the server's business (`server/verification.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kakumei.schemas import GenerationRequest
from kakumei.worker.loop import GenerationEngine
from kakumei.worker.perceptual import png_distance


@dataclass(frozen=True)
class Verdict:
    distance: float  # the largest distance of any image; 1.0 when images are missing
    passed: bool
    # On a mismatch, the re-run's images (index -> png, infotext, metadata), so that the user
    # can get the picture they asked for.
    corrected: dict[int, tuple[bytes, str, dict[str, Any]]] | None


def recheck(
    engine: GenerationEngine, request: GenerationRequest, reported: Mapping[int, bytes], *, max_distance: float
) -> Verdict:
    """Re-run `request` (its seed the reported one) and compare with the `reported` PNGs by
    image index. A KakumeiError from the engine (say it lacks the model) means the check
    cannot be made here, and is left to the caller."""
    result = engine.generate(request)
    return compare(reported, {g.index: (g.png, g.infotext, g.metadata) for g in result.images},
                   max_distance=max_distance)


def compare(
    reported: Mapping[int, bytes], fresh: Mapping[int, tuple[bytes, str, dict[str, Any]]], *, max_distance: float
) -> Verdict:
    """The verdict on `reported` PNGs against a trusted re-run's images (index -> png,
    infotext, metadata), wherever the re-run was made (here, or on a trusted remote worker)."""
    distances = [png_distance(png, fresh[index][0]) if index in fresh else 1.0 for index, png in reported.items()]
    # Missing images count as a mismatch as much as wrong ones do.
    distance = max(distances) if distances and len(reported) == len(fresh) else 1.0
    passed = distance <= max_distance
    return Verdict(distance=distance, passed=passed, corrected=None if passed else dict(fresh))
