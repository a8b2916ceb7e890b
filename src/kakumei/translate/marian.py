"""A local sequence-to-sequence model (Marian / Opus-MT style, e.g. a Japanese-English model
folder saved by transformers) as a translator: better sentences than word by word, for users
who have one on disk. Nothing is downloaded: the folder must hold the model and its tokenizer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from kakumei.translate.base import TranslatorUnavailable

# Enough for one run of a prompt; a run is a stretch between two pieces of prompt syntax.
MAX_NEW_TOKENS = 128


class ModelTranslator:
    """Greedy decoding (no sampling), so the same run always gives the same English."""

    name = "model"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            if not self.folder.is_dir():
                raise TranslatorUnavailable(
                    f"the translator setting names {str(self.folder)!r}, which is not a folder; "
                    "use 'dictionary', 'off' or a local translation model folder"
                )
            try:
                from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
                model = AutoModelForSeq2SeqLM.from_pretrained(str(self.folder), local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - any loading failure is one sentence
                raise TranslatorUnavailable(
                    f"the translation model in {str(self.folder)!r} cannot be loaded ({type(exc).__name__})"
                ) from None
            model.eval()
            self._tokenizer, self._model = tokenizer, model

    def translate_run(self, run: str, deadline: float | None = None) -> tuple[str, list[str]]:
        self.load()
        if deadline is not None and time.monotonic() > deadline:
            return run, [run]
        # generate() runs without gradients of its own accord.
        with self._lock:
            batch = self._tokenizer([run], return_tensors="pt", truncation=True)
            # No longer than the model's positions reach (a small model may have few).
            most = min(MAX_NEW_TOKENS, getattr(self._model.config, "max_position_embeddings", MAX_NEW_TOKENS + 1) - 1)
            out = self._model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=most)
            text = self._tokenizer.batch_decode(out, skip_special_tokens=True)[0]
        return text.strip().rstrip("."), []
