"""server/bigjson.py parses as json.loads does: the same values, the same errors at the same
places, whether it cuts the long strings out or falls back to parsing whole."""

from __future__ import annotations

import json
import random
import string

import pytest

from kakumei.server import bigjson

LONG = "A" * bigjson.LONG + "+/=09"
HUGE = "".join(random.Random(1).choices(string.ascii_letters + "+/", k=3 * bigjson.CHUNK + 17))

SAME = [
    {"prompt": "a fox", "init_images": [HUGE, LONG, "short"], "mask": LONG},
    {LONG: [LONG, {"x": LONG}], "é ü 日本": "ünïcode before and after " + LONG[:10], "n": [1, 2.5, None, True]},
    [LONG, "esc\\\"aped \\\\", LONG + "x", "\u00e9" * 10],
    {"a": "with \\\" quote then long", "b": LONG, "c": "\\\\", "d": LONG},
    {"nan": float("inf"), "s": LONG, "deep": [[[[LONG]]]]},
]


@pytest.mark.parametrize("value", SAME)
def test_values_are_those_json_loads_gives(value) -> None:
    raw = json.dumps(value, ensure_ascii=False).encode()
    assert bigjson.loads(raw) == json.loads(raw)
    assert bigjson.loads(bytearray(raw)) == json.loads(raw)
    spaced = json.dumps(value, ensure_ascii=False, indent=2).encode()
    assert bigjson.loads(spaced) == json.loads(spaced)


def test_long_strings_are_cut_out_and_others_are_parsed_whole(monkeypatch) -> None:
    cut: list[int] = []
    real = bigjson._text
    monkeypatch.setattr(bigjson, "_text", lambda view, start, end: cut.append(end - start) or real(view, start, end))
    bigjson.loads(json.dumps({"a": LONG, "b": "x" * 10, "c": HUGE}).encode())
    assert cut == [len(LONG), len(HUGE)]
    cut.clear()
    # A long string with an escape, a control character or non-ASCII text stays in the skeleton.
    for odd in (LONG + "\\n", LONG + "\t", LONG + "\u00e9"):
        raw = json.dumps({"a": odd}, ensure_ascii=False).encode() if "\t" not in odd else ('{"a": "' + odd + '"}').encode()
        try:
            expected = json.loads(raw)
        except json.JSONDecodeError as exc:
            with pytest.raises(json.JSONDecodeError) as got:
                bigjson.loads(raw)
            assert (got.value.msg, got.value.pos) == (exc.msg, exc.pos)
        else:
            assert bigjson.loads(raw) == expected
    assert cut == []


BROKEN = [
    '{"a": "' + LONG + '" "b": 1}',
    '{"a": "' + LONG + '", "b": "' + LONG + '",}',
    '["' + LONG + '", "é", tru]',
    '{"a": "' + LONG + '"} trailing',
    '{"a": "' + LONG + '", "b": "' + LONG,
    '{"a": "' + LONG + '", "b": "ok\\"',
    '{"\u00e9\u00e9": "' + LONG + '", x}',
]


@pytest.mark.parametrize("text", BROKEN)
def test_errors_are_those_json_loads_gives_at_the_same_place(text: str) -> None:
    raw = text.encode()
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(raw)
    with pytest.raises(json.JSONDecodeError) as got:
        bigjson.loads(raw)
    assert (got.value.msg, got.value.pos) == (expected.value.msg, expected.value.pos)


def test_a_forged_placeholder_is_only_text() -> None:
    raw = json.dumps({"a": LONG, "b": "\x00kakumei-0000000000000000-0"}).encode()
    assert bigjson.loads(raw) == json.loads(raw)


def test_bodies_in_other_encodings_and_with_many_strings_are_parsed_whole() -> None:
    value = {"a": LONG, "b": ["x"] * (bigjson.MAX_MARKS + 1)}
    raw = json.dumps(value).encode()
    assert bigjson.loads(raw) == value
    for encoding in ("utf-16", "utf-32-le", "utf-8-sig"):
        assert bigjson.loads(json.dumps({"a": LONG}).encode(encoding)) == {"a": LONG}
    with pytest.raises(ValueError):
        bigjson.loads(b'{"a": "' + LONG.encode() + b'\xff"}')
