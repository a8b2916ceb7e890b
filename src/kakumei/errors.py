"""Domain exceptions. Each carries one sentence a user can act on; the CLI and the
server show `str(exc)` and never a traceback (unless --debug)."""

from __future__ import annotations


class KakumeiError(Exception):
    """Base class: the message is meant for the user."""


class InvalidRequest(KakumeiError):
    """A request field has a value kakumei cannot honour."""


class ModelNotFound(KakumeiError):
    """A model reference points at nothing usable."""


class ModelLoadError(KakumeiError):
    """A model exists but cannot be loaded (corrupt, truncated, wrong layout)."""


class MetadataNotFound(KakumeiError):
    """An image carries no generation metadata."""


class GenerationCancelled(KakumeiError):
    """Generation stopped between steps because it was cancelled.

    `images` holds the images finished before the cancel, so callers keep them. `partial`
    holds the stopped batch's images as far as denoising got (decoded, not yet finished).
    """

    def __init__(self, message: str = "generation cancelled", images: list | None = None, partial: list | None = None) -> None:
        super().__init__(message)
        self.images = images or []
        self.partial = partial or []


class ConfigError(KakumeiError):
    """A setting (environment, kakumei.toml, flag) has an invalid value."""


class NonFiniteImage(KakumeiError):
    """The model decoded an image with NaN or infinite pixels (it would be saved black)."""
