"""Japanese prompts in English before they are encoded: CLIP's text encoders were trained on
English, and a Japanese prompt reaches them as noise.

Pure and engine-independent: the server translates at submit (`server/submission.py`) and the
CLI before generating, both through `translate_request`. Only the stretches of Japanese are
translated; prompt syntax (weights, extra-network tags, BREAK, prompt editing, embeddings) and
English words pass through as written. The translator is chosen by the `translator` setting
and loaded on the first prompt that needs it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kakumei.errors import InvalidRequest
from kakumei.schemas import MAX_PROMPT_CHARS, GenerationRequest
from kakumei.translate.base import INSTALL_HINT, Translator, TranslatorUnavailable
from kakumei.translate.text import contains_japanese, fold, rebuild

_log = logging.getLogger("kakumei.translate")

__all__ = [
    "INSTALL_HINT",
    "Translation",
    "Translator",
    "TranslatorUnavailable",
    "contains_japanese",
    "dictionary_installed",
    "translate_request",
    "translate_text",
    "translator_for",
    "untranslated_note",
]


@dataclass(frozen=True)
class Translation:
    """A prompt and its English; `unknown` names the words kept as written."""

    source: str
    text: str
    unknown: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return self.text != self.source


# How long one prompt may take to translate. Dictionary look-ups cost milliseconds each and
# anyone may send 10,000 characters of kanji; past this the rest is kept as written (and
# named), so a submission never ties up a server thread for long.
TRANSLATE_SECONDS = 3.0


def translate_text(text: str, translator: Translator | None, seconds: float = TRANSLATE_SECONDS) -> Translation:
    """`text` with its Japanese in English. Always gives a prompt: a run the translator fails
    on, or has no time left for, is kept as written and named in `unknown`.
    `TranslatorUnavailable` only when Japanese is there and the translator cannot load."""
    if translator is None or not contains_japanese(text):
        return Translation(text, text)
    translator.load()
    unknown: list[str] = []
    deadline = time.monotonic() + seconds

    def run(japanese: str) -> str:
        try:
            english, missing = translator.translate_run(japanese, deadline)
        except TranslatorUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a prompt always comes out
            _log.warning("the %s translator failed on %r (%s: %s); kept as written", translator.name, japanese, type(exc).__name__, exc)
            english, missing = japanese, [japanese]
        unknown.extend(w for w in missing if w not in unknown)
        return english

    return Translation(text, rebuild(fold(text), run), tuple(unknown))


_translators: dict[str, Translator] = {}
_translators_lock = threading.Lock()


def translator_for(setting: str) -> Translator | None:
    """The translator the `translator` setting names (`dictionary`, `off`, or a model folder),
    one per process and setting; None for `off`. Nothing is loaded until it translates."""
    if setting == "off":
        return None
    with _translators_lock:
        found = _translators.get(setting)
        if found is None:
            if setting == "dictionary":
                from kakumei.translate.dictionary import DictionaryTranslator

                found = DictionaryTranslator()
            else:
                from kakumei.translate.marian import ModelTranslator

                found = ModelTranslator(Path(setting).expanduser())
            _translators[setting] = found
        return found


def dictionary_installed() -> bool:
    """Whether the `ja` extra (tokenizer and JMdict) is importable, without importing it."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("fugashi", "jamdict", "jamdict_data", "unidic_lite"))


def untranslated_note(words: list[str] | tuple[str, ...]) -> str:
    return "not in the dictionary, kept as written: " + ", ".join(words)


def translate_request(request: GenerationRequest, translator: Translator | None) -> GenerationRequest:
    """The request with its prompt and negative prompt in English and the originals recorded,
    or the request itself when there is nothing to translate, translation is off
    (`translate: false`), or it was translated before (it records an original: a
    regeneration, or English the user edited)."""
    if not request.translate or request.prompt_original is not None or request.negative_prompt_original is not None:
        return request
    prompt = translate_text(request.prompt, translator)
    negative = translate_text(request.negative_prompt, translator)
    if not prompt.changed and not negative.changed:
        return request
    for name, t in (("prompt", prompt), ("negative_prompt", negative)):
        if len(t.text) > MAX_PROMPT_CHARS:
            raise InvalidRequest(f"{name} in English is longer than {MAX_PROMPT_CHARS} characters; shorten it")
    unknown = list(dict.fromkeys([*prompt.unknown, *negative.unknown]))
    return request.model_copy(
        update={
            "prompt": prompt.text,
            "negative_prompt": negative.text,
            "prompt_original": prompt.source if prompt.changed else None,
            "negative_prompt_original": negative.source if negative.changed else None,
            "untranslated": unknown,
        }
    )
