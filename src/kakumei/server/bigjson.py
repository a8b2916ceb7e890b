"""JSON parsing that lets go of the interpreter now and then: for bodies of big images.

`json.loads` (and every other parser here) holds the GIL for the whole document: a 64 MB body
of base64 images keeps the event loop, and so every other request, waiting a second on a
loaded machine. Such a body is almost all a few long string literals. `loads` cuts those out
with short calls that each see at most CHUNK bytes (1 MiB) (quotes found by `bytes.find`, the text
checked with `bytes.translate` and decoded piece by piece), parses the small rest with
`json.loads`, and puts the strings back: the same value, errors in the same words, and the
loop gets the GIL between every two pieces. A body it cannot cut that way (many strings,
escapes in a long one, not UTF-8) is parsed whole, as before; the byte budget of
server/limits.py keeps such parses to one body's worth at a time.
"""

from __future__ import annotations

import bisect
import json
import secrets
from typing import Any

# Strings at least this long are cut out; smaller bodies are parsed whole.
LONG = 64 * 1024
# The most bytes one call looks at, so that the GIL changes hands between calls.
CHUNK = 1024 * 1024
# Past this many quotes or backslashes, finding the strings would cost more than parsing.
MAX_MARKS = 20_000
# Every byte a JSON string may hold as it is, but a quote or a backslash: printable ASCII.
_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


class Unsplittable(Exception):
    """The body is not one `loads` can cut into pieces; parse it whole."""


def loads(raw: bytes | bytearray) -> Any:
    """`json.loads(raw)` for a UTF-8 body, parsed in short calls where it has long strings.
    Raises json.JSONDecodeError as json.loads does (positions in `raw`), ValueError and
    RecursionError too."""
    if len(raw) >= LONG and json.detect_encoding(raw) == "utf-8":
        try:
            return _split_loads(raw)
        except Unsplittable:
            pass
    return json.loads(raw)


def _split_loads(raw: bytes | bytearray) -> Any:
    if _count(raw, b'"') > MAX_MARKS or _count(raw, b"\\") > MAX_MARKS:
        raise Unsplittable
    view = memoryview(raw)
    token = "\x00kakumei-" + secrets.token_hex(8) + "-"  # a NUL: no valid body can hold it
    skeleton: list[bytes] = []
    longs: list[str] = []
    # (characters of the skeleton up to the end of a cut, characters the cuts took out so far),
    # to place an error at its position in the body as sent
    shifts: list[tuple[int, int]] = [(0, 0)]
    at = kept = out = 0  # where to look for the next quote; where the skeleton's next piece starts
    while True:
        start = raw.find(b'"', at)
        if start < 0:
            break
        end = raw.find(b'"', start + 1)
        while end > 0 and _escaped(raw, end):
            end = raw.find(b'"', end + 1)
        if end < 0:
            break  # unterminated: json.loads on the skeleton says so
        if end - start - 1 >= LONG and _plain(view, start + 1, end):
            placeholder = json.dumps(token + str(len(longs))).encode()
            piece = bytes(view[kept:start])
            try:
                out += len(piece.decode("utf-8")) + len(placeholder)
            except UnicodeDecodeError:
                raise Unsplittable from None
            skeleton += (piece, placeholder)
            longs.append(_text(view, start + 1, end))
            shifts.append((out, shifts[-1][1] + end + 1 - start - len(placeholder)))
            kept = end + 1
        at = end + 1
    if not longs:
        raise Unsplittable
    skeleton.append(bytes(view[kept:]))
    del view
    small = b"".join(skeleton)
    try:
        value = json.loads(small)
    except json.JSONDecodeError as exc:
        # The same error at its place in the body as sent (the long strings hold no line
        # breaks, so its line is the same; its column counts the skeleton's characters).
        i = bisect.bisect_right([s for s, _ in shifts], exc.pos) - 1
        error = json.JSONDecodeError(exc.msg, exc.doc, exc.pos)
        error.pos = exc.pos + shifts[i][1]
        raise error from None
    return _put_back(value, token, longs)


def _count(raw: bytes | bytearray, mark: bytes) -> int:
    return sum(raw.count(mark, i, i + CHUNK) for i in range(0, len(raw), CHUNK))


def _escaped(raw: bytes | bytearray, quote: int) -> bool:
    """Whether the quote at `quote` is escaped: after an odd run of backslashes."""
    run = 0
    while quote - run - 1 >= 0 and raw[quote - run - 1] == 0x5C:
        run += 1
    return run % 2 == 1


def _plain(view: memoryview, start: int, end: int) -> bool:
    """Whether raw[start:end] is printable ASCII without backslashes (a JSON string's text as
    it stands), looked at CHUNK bytes per call."""
    return all(not bytes(view[i : min(i + CHUNK, end)]).translate(None, _PLAIN) for i in range(start, end, CHUNK))


def _text(view: memoryview, start: int, end: int) -> str:
    return "".join(str(view[i : min(i + CHUNK, end)], "ascii") for i in range(start, end, CHUNK))


def _put_back(value: Any, token: str, longs: list[str]) -> Any:
    if isinstance(value, str):
        return longs[int(value[len(token):])] if value.startswith(token) else value
    if isinstance(value, list):
        return [_put_back(v, token, longs) for v in value]
    if isinstance(value, dict):
        return {_put_back(k, token, longs): _put_back(v, token, longs) for k, v in value.items()}
    return value
