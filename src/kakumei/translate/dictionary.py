"""The offline translator: a Japanese tokenizer (fugashi with unidic-lite) cuts a run of
Japanese into words, and JMdict (jamdict with jamdict-data) gives each the English.

Longest dictionary match first over the tokenizer's words, so that compounds stay whole (高画質
is "high image quality", not three words); the most common entry's first sense and first gloss,
without its parentheticals; particles and auxiliaries skipped. Words no dictionary knows are
kept as written and reported. Both libraries are imported on the first translation only, so a
process that never sees Japanese never loads them.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kakumei.translate.base import INSTALL_HINT, TranslatorUnavailable

# The longest stretch of tokenizer words tried as one dictionary entry.
MAX_SPAN = 6
# Parts of speech (UniDic's first level) that carry no content of their own in a prompt.
_SKIPPED_POS = frozenset({"助詞", "助動詞", "補助記号", "空白"})
# Verbs that after a te-form or a noun only mark aspect or make a noun a verb (走っている,
# 散歩する): their English ("to be", "to do") would be noise in a prompt.
_HELPER_VERBS = frozenset({"いる", "居る", "ある", "有る", "おる", "居る", "する", "為る", "しまう", "仕舞う", "くる", "来る", "いく", "行く", "なる", "成る"})
_PARENTHETICAL = re.compile(r"\s*\([^()]*\)")
_KATAKANA = re.compile("^[\u30a0-\u30ff]+$")
# Particles that join two nouns as "and" (山と湖, 犬や猫); other particles are skipped.
_AND_PARTICLES = frozenset({"と", "や"})
# Parts of speech that inflect: their dictionary form is looked up before the written one
# (着 of 着た is the verb 着る, not the counter for suits).
_INFLECTING = frozenset({"動詞", "形容詞", "形状詞"})
# Words of image prompts for which JMdict's first sense is not the one a prompt means (騎士's
# first sense is "samurai on horseback", 人's is the suffix "-ian"). Looked up before JMdict.
PHRASES: dict[str, str] = {
    "最高品質": "best quality",
    "高品質": "high quality",
    "低品質": "low quality",
    "最低品質": "worst quality",
    "騎士": "knight",
    "人": "person",
    "笑顔": "smile",
    "美少女": "beautiful girl",
    "少女": "girl",
    "少年": "boy",
    "背景": "background",
    "全身": "full body",
    "上半身": "upper body",
    "風景": "landscape",
    "目": "eyes",
    "瞳": "eyes",
    "夜": "night",
    "侍": "samurai",
    "杖": "staff",
}
# Suffixes whose meaning as a suffix differs from the same kanji as a word (浮世絵風 is
# "ukiyo-e style", not "ukiyo-e wind"); "" drops one.
SUFFIXES: dict[str, str] = {"風": "style", "的": "", "人": "person", "製": "made", "色": "color"}
# What may follow と or や for it to read as "and".
_NOUN_LIKE = frozenset({"名詞", "形容詞", "形状詞", "接頭辞", "代名詞"})


@dataclass(frozen=True)
class _Token:
    surface: str
    base: str  # the dictionary form (走っ → 走る)
    pos: str
    pos2: str
    lemma: str


def clean_gloss(text: str) -> str:
    """A JMdict gloss as a prompt word: parentheticals dropped ("hair (on the head)" → "hair"),
    and the infinitive's "to" ("to run" → "run")."""
    while True:  # nested ones too: "dog (Canis (lupus) familiaris)"
        shorter = _PARENTHETICAL.sub("", text)
        if shorter == text:
            break
        text = shorter
    text = text.strip()
    for article in ("to ", "the "):  # "to run" → "run", "the future" → "future"
        if text.startswith(article) and len(text) > len(article):
            text = text[len(article) :]
    return text.strip(" ;,")


class DictionaryTranslator:
    """Word-by-word translation with JMdict; see the module's docstring."""

    name = "dictionary"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tagger: Any = None
        self._jam: Any = None

    def load(self) -> None:
        """Open the tokenizer and the dictionary (once); `TranslatorUnavailable` when the
        `ja` extra is not installed."""
        with self._lock:
            if self._jam is not None:
                return
            try:
                import fugashi
                from jamdict import Jamdict
            except ImportError:
                raise TranslatorUnavailable(f"Japanese prompts need the offline dictionary, which is not installed: {INSTALL_HINT}") from None
            try:
                tagger = fugashi.Tagger()
                # A connection per lookup: an SQLite connection serves only the thread that
                # opened it, and the server translates in its thread pool.
                jam = Jamdict(reuse_ctx=False)
                if not jam.ready:
                    raise RuntimeError("no JMdict database")
            except Exception:  # noqa: BLE001 - any failure to open them is one sentence
                raise TranslatorUnavailable(
                    f"the Japanese dictionary (unidic-lite or jamdict-data) is missing or damaged; reinstall it: {INSTALL_HINT}"
                ) from None
            self._tagger, self._jam = tagger, jam

    def translate_run(self, run: str, deadline: float | None = None) -> tuple[str, list[str]]:
        """One stretch of Japanese (no prompt syntax in it) as English words, and the words
        kept as written because no dictionary knew them or `deadline` had passed."""
        self.load()
        tokens = self._tokens(run)
        words: list[str] = []
        unknown: list[str] = []
        i = 0
        while i < len(tokens):
            if deadline is not None and time.monotonic() > deadline:
                rest = "".join(t.surface for t in tokens[i:])
                return " ".join([*words, rest]), [*unknown, rest]
            token = tokens[i]
            if token.surface in _AND_PARTICLES and token.pos == "助詞" and words and i + 1 < len(tokens) and tokens[i + 1].pos in _NOUN_LIKE:
                words.append("and")
                i += 1
                continue
            if token.pos in _SKIPPED_POS or self._helper(tokens, i):
                i += 1
                continue
            if token.pos == "接尾辞" and token.surface in SUFFIXES:
                if SUFFIXES[token.surface]:
                    words.append(SUFFIXES[token.surface])
                i += 1
                continue
            english, used = self._longest(tokens, i)
            if english is None:
                english = _loanword(token)
            if english is None:
                words.append(token.surface)
                unknown.append(token.surface)
                used = 1
            elif english:
                words.append(english)
            i += used
        return " ".join(words), unknown

    @staticmethod
    def _helper(tokens: list[_Token], i: int) -> bool:
        if tokens[i].pos != "動詞" or tokens[i].base not in _HELPER_VERBS or i == 0:
            return False
        before = tokens[i - 1]
        return before.pos in ("助詞", "名詞") or before.pos == "動詞"

    def _tokens(self, run: str) -> list[_Token]:
        out = []
        with self._lock:
            words = list(self._tagger(run))
        for w in words:
            f = w.feature
            base = getattr(f, "orthBase", None) or w.surface
            if base == "*":
                base = w.surface
            out.append(_Token(w.surface, base, getattr(f, "pos1", "") or "", getattr(f, "pos2", "") or "", getattr(f, "lemma", "") or ""))
        return out

    def _longest(self, tokens: list[_Token], i: int) -> tuple[str | None, int]:
        """The English of the longest stretch of words from `i` that JMdict knows, and how
        many words it took."""
        for j in range(min(len(tokens), i + MAX_SPAN), i, -1):
            span = tokens[i:j]
            if j - i > 1 and span[-1].pos in _SKIPPED_POS:
                continue  # a compound does not end in a particle
            head = "".join(t.surface for t in span[:-1])
            written, base = head + span[-1].surface, head + span[-1].base
            order = (base, written) if span[-1].pos in _INFLECTING else (written, base)
            for candidate in dict.fromkeys(order):
                english = self.gloss(candidate)
                if english is not None:
                    return english, j - i
        return None, 1

    def gloss(self, word: str) -> str | None:
        """JMdict's English for `word` written exactly so (kanji or kana), or None."""
        return _cached_gloss(self, word)

    def _lookup(self, word: str) -> str | None:
        if word in PHRASES:
            return PHRASES[word]
        result = self._jam.lookup(word, strict_lookup=True, lookup_chars=False, lookup_ne=False)
        entries = [e for e in result.entries if _has_form(e, word)]
        if not entries:
            return None
        # JMdict marks its common words (news1, ichi1, spec1, gai1): the common entry wins.
        entries.sort(key=lambda e: 0 if _common(e, word) else 1)
        for entry in entries:
            for sense in entry.senses:
                for g in sense.gloss:
                    if getattr(g, "lang", "eng") not in ("eng", "", None):
                        continue
                    text = clean_gloss(g.text)
                    if text:
                        return text
        return None


@lru_cache(maxsize=65536)
def _cached_gloss(translator: DictionaryTranslator, word: str) -> str | None:
    return translator._lookup(word)


def _forms(entry: Any) -> list[Any]:
    return [*entry.kanji_forms, *entry.kana_forms]


def _has_form(entry: Any, word: str) -> bool:
    return any(f.text == word for f in _forms(entry))


def _common(entry: Any, word: str) -> bool:
    return any(f.text == word and f.pri for f in _forms(entry))


def _loanword(token: _Token) -> str | None:
    """UniDic spells a katakana loanword's lemma with its origin (ドレス-dress): the English
    when JMdict lacks the word."""
    if _KATAKANA.match(token.surface) and "-" in token.lemma:
        origin = token.lemma.rsplit("-", 1)[1]
        if origin.isascii() and origin.replace(" ", "").isalpha():
            return origin
    return None
