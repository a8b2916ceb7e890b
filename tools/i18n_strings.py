"""The web page's strings: every text of index.html and every t("...") of app.js.

`python tools/i18n_strings.py` writes web/i18n/en.json (English to English: the list every
other language's file translates) and names the strings a language's file lacks or no longer
needs. tests/web/test_i18n_files.py runs the same extraction.
"""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "src" / "kakumei" / "web"
ATTRIBUTES = ("placeholder", "title", "aria-label", "alt")
# Text that is no word of any language: the name, key names, numbers.
UNTRANSLATED = {"kakumei", "Ctrl+Enter", "English", "日本語"}
_T_CALL = re.compile(r'\bt\(\s*"((?:[^"\\]|\\.)*)"')
_PLURAL_FORMS = re.compile(r'\["(\{n\} [^"]*)", "(\{n\} [^"]*)"\]')


class _Texts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "code"):
            self._skip += 1
        for name, value in attrs:
            if name in ATTRIBUTES and value:
                self._add(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "code"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._add(data)

    def _add(self, text: str) -> None:
        text = " ".join(text.split())
        if text and re.search(r"[A-Za-z]", text) and text not in UNTRANSLATED:
            self.found.append(text)


def page_strings() -> list[str]:
    parser = _Texts()
    parser.feed((WEB / "index.html").read_text(encoding="utf-8"))
    return parser.found


def script_strings() -> list[str]:
    source = (WEB / "app.js").read_text(encoding="utf-8")
    found = [json.loads(f'"{m}"') for m in _T_CALL.findall(source)]
    for one, many in _PLURAL_FORMS.findall(source):
        found += [one, many]
    return found


def all_strings() -> list[str]:
    return list(dict.fromkeys([*page_strings(), *script_strings()]))


def main() -> int:
    strings = all_strings()
    en = {"language": "English", "strings": {s: s for s in strings}, "server_sentences": []}
    (WEB / "i18n" / "en.json").write_text(json.dumps(en, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    status = 0
    for path in sorted((WEB / "i18n").glob("*.json")):
        have = json.loads(path.read_text(encoding="utf-8"))["strings"]
        missing = [s for s in strings if s not in have]
        extra = [s for s in have if s not in strings]
        for s in missing:
            print(f"{path.name}: missing {s!r}")
        for s in extra:
            print(f"{path.name}: not used {s!r}")
        status |= bool(missing or extra)
    return status


if __name__ == "__main__":
    sys.exit(main())
