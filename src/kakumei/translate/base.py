"""What every translator is: one small interface, and the error for one that cannot run."""

from __future__ import annotations

from typing import Protocol

from kakumei.errors import KakumeiError

INSTALL_HINT = "pip install 'kakumei[ja]'"


class TranslatorUnavailable(KakumeiError):
    """The configured translator cannot run here (its extra or model folder is missing)."""


class Translator(Protocol):
    """Turns one stretch of Japanese (no prompt syntax in it) into English.

    `translate_run` returns the English and the words it kept as written because it did not
    know them (or, past `deadline`, a `time.monotonic()` value, had no time left for). `load` opens whatever the translator needs, raising `TranslatorUnavailable`.
    """

    name: str

    def load(self) -> None: ...

    def translate_run(self, run: str, deadline: float | None = None) -> tuple[str, list[str]]: ...
