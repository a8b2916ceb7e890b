"""kakumei: Stable Diffusion for everyone.

`from kakumei import Engine` gives the same generation the CLI uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Engine", "GenerationRequest", "Settings", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from kakumei.config import Settings
    from kakumei.engine.pipeline import Engine
    from kakumei.schemas import GenerationRequest


def __getattr__(name: str) -> Any:
    # Lazy so that `import kakumei` (e.g. by the fairness simulator) does not import torch.
    if name == "Engine":
        from kakumei.engine.pipeline import Engine

        return Engine
    if name == "GenerationRequest":
        from kakumei.schemas import GenerationRequest

        return GenerationRequest
    if name == "Settings":
        from kakumei.config import Settings

        return Settings
    raise AttributeError(name)
