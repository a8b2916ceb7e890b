"""Finding Japanese in a prompt and cutting the prompt into what is translated and what is not.

Pure string work, no dictionary: it decides whether a prompt needs a translator at all (so an
English prompt never loads one), folds full-width and half-width forms to the forms A1111's
parser reads, and leaves every piece of prompt syntax where it was.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

# Kana, kanji and the marks written inside Japanese words (々 repeats a kanji, ー lengthens a
# vowel, ヶ and 〆 are kanji-like abbreviations). Half-width katakana (U+FF66-U+FF9F) counts
# too: it is folded to full width before the tokenizer sees it.
_JAPANESE_CHARS = (
    "\u3041-\u309f"  # hiragana, with the voicing marks
    "\u30a0-\u30ff"  # katakana, ー and ・
    "\u31f0-\u31ff"  # small katakana for Ainu
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # half-width katakana
    "\u3005-\u3007"  # 々 〆 〇
)
_JAPANESE_RUN = re.compile(f"[{_JAPANESE_CHARS}]+")
# What makes a prompt need folding even without kana or kanji: full-width ASCII forms
# (（）：，！ and full-width letters and digits), CJK punctuation and the ideographic space.
_NEEDS_FOLDING = re.compile(f"[{_JAPANESE_CHARS}\u3000-\u3004\u3008-\u303f\uff01-\uff65]")

# CJK punctuation as the Latin punctuation A1111's parser and CLIP read. Commas, because a
# Japanese sentence end or enumeration comma separates tags the way a comma does in English.
_PUNCTUATION = {
    "\u3000": " ",  # ideographic space
    "、": ", ",
    "。": ", ",
    "､": ", ",  # half-width ideographic comma
    "｡": ", ",  # half-width full stop
    "・": " ",  # middle dot between katakana words
    "･": " ",
    "「": " ", "」": " ", "『": " ", "』": " ", "｢": " ", "｣": " ",
    "【": "(", "】": ")",  # lenticular brackets mark emphasis in Japanese prompts
    "〈": "(", "〉": ")", "《": "(", "》": ")",
    "〔": "(", "〕": ")",
    "〜": " ", "～": " ",  # wave dash, often a decoration
}

# Text the translator never touches: extra-network tags (<lora:名前:0.8> keeps its file name)
# and backslash escapes.
_PROTECTED = re.compile(r"<[^<>\n]*>|\\.")


def contains_japanese(text: str) -> bool:
    """Whether `text` has kana, kanji, half-width katakana or CJK and full-width punctuation,
    that is whether it would change on its way through a translator."""
    return bool(_NEEDS_FOLDING.search(text))


def _fold_char(ch: str) -> str:
    mapped = _PUNCTUATION.get(ch)
    if mapped is not None:
        return mapped
    code = ord(ch)
    if 0xFF01 <= code <= 0xFF5E:  # full-width ASCII: （ → (, ： → :, ０ → 0, Ａ → A
        return chr(code - 0xFEE0)
    return ch


_HALF_WIDTH_KANA = re.compile("[\uff66-\uff9f]+")


def fold(text: str) -> str:
    """Full-width forms and CJK punctuation to ASCII, half-width katakana to full width
    (ｶﾞ → ガ): what the tokenizer and the prompt parser expect."""
    text = _HALF_WIDTH_KANA.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    return "".join(_fold_char(ch) for ch in text)


@dataclass(frozen=True)
class Piece:
    """A stretch of the prompt: Japanese to translate, or anything else to keep as it is."""

    text: str
    japanese: bool


def pieces(text: str) -> list[Piece]:
    """Cut a folded prompt into Japanese runs and everything else (syntax, English, tags)."""
    out: list[Piece] = []
    pos = 0
    for protected in _PROTECTED.finditer(text):
        out.extend(_runs(text[pos : protected.start()]))
        out.append(Piece(protected.group(0), False))
        pos = protected.end()
    out.extend(_runs(text[pos:]))
    return [p for p in out if p.text]


def _runs(text: str) -> list[Piece]:
    out: list[Piece] = []
    pos = 0
    for run in _JAPANESE_RUN.finditer(text):
        out.append(Piece(text[pos : run.start()], False))
        out.append(Piece(run.group(0), True))
        pos = run.end()
    out.append(Piece(text[pos:], False))
    return out


# Characters a translation touches without a space: brackets, separators, weights' colons.
_TIGHT_BEFORE = frozenset(" \t\n([{<:|,\\")
_TIGHT_AFTER = frozenset(" \t\n)]}>:|,.!?\\")


_SPACES = re.compile(r"[ \t]{2,}")
_SPACE_BEFORE = re.compile(r"[ \t]+([,)\]])")
_SPACE_AFTER = re.compile(r"([(\[])[ \t]+")
_COMMAS = re.compile(r",(?:[ \t]*,)+")


def rebuild(folded: str, translate_run: Callable[[str], str]) -> str:
    """The folded prompt with each Japanese run replaced by `translate_run(run)`.

    A space goes between a translation and a word next to it (1girl赤い髪 → 1girl red hair);
    doubled spaces, spaces inside brackets and empty commas that translation and folding left
    are tidied, which A1111's parser reads the same way.
    """
    out = ""
    after_translation = False
    for piece in pieces(folded):
        if not piece.japanese:
            if after_translation and out and out[-1] not in _TIGHT_BEFORE and piece.text[0] not in _TIGHT_AFTER:
                out += " "
            out += piece.text
            after_translation = False
            continue
        english = translate_run(piece.text).strip()
        if not english:
            continue
        if out and out[-1] not in _TIGHT_BEFORE and english[0] not in _TIGHT_AFTER:
            out += " "
        out += english
        after_translation = True
    out = _SPACES.sub(" ", out)
    out = _SPACE_BEFORE.sub(r"\1", out)
    out = _SPACE_AFTER.sub(r"\1", out)
    out = _COMMAS.sub(",", out)
    lines = [line.strip(" \t") for line in out.split("\n")]
    return "\n".join(line.rstrip(",").strip() if line.endswith(",") else line for line in lines)
