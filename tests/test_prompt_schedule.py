"""Prompt editing and alternation: the schedules of A1111's own examples, exactly as its
get_learned_conditioning_prompt_schedules returns them, and that no prompt makes it raise."""

from __future__ import annotations

import random

import pytest

from kakumei.prompt_schedule import has_schedule, prompt_schedule, text_at

ALTERNATE_A_B11 = [[s, "a" if s % 2 else "(b:1.1)"] for s in range(1, 11)]

# The docstring examples of A1111's modules/prompt_parser.py, 10 steps.
A1111_EXAMPLES = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    # The docstring still says [[5, 'a  c'], [10, 'a {b|d{ c']], from before "|" became
    # alternation; A1111's parser has since read this prompt as literal text (checked
    # against its lark grammar), and so does kakumei.
    ("a [{b|d{:.5] c", [[10, "a [{b|d{:.5] c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", ALTERNATE_A_B11),
    ("[fe|]male", [[s, "female" if s % 2 else "male"] for s in range(1, 11)]),
    ("[fe|||]male", [[s, "female" if s % 4 == 1 else "male"] for s in range(1, 11)]),
]

# The second group of the docstring: a hires fix's second pass of 10 steps after 10.
A1111_HIRES_EXAMPLES = [
    ("a [b:.5] c", [[10, "a b c"]]),
    ("a [b:1.5] c", [[5, "a  c"], [10, "a b c"]]),
]

# The example in the comment at the top of A1111's prompt_parser.py, at 100 steps.
LANDSCAPE = (
    "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
    "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
)
LANDSCAPE_SCHEDULE = [
    [25, "fantasy landscape with a mountain and an oak in foreground shoddy"],
    [50, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
    [60, "fantasy landscape with a lake and an oak in foreground in background masterful"],
    [75, "fantasy landscape with a lake and an oak in background masterful"],
    [100, "fantasy landscape with a lake and a christmas tree in background masterful"],
]


def as_lists(schedule) -> list[list]:
    return [[until, text] for until, text in schedule]


@pytest.mark.parametrize(("prompt", "expected"), A1111_EXAMPLES)
def test_schedules_match_a1111(prompt: str, expected: list[list]) -> None:
    assert as_lists(prompt_schedule(prompt, 10)) == expected


@pytest.mark.parametrize(("prompt", "expected"), A1111_HIRES_EXAMPLES)
def test_hires_schedules_match_a1111(prompt: str, expected: list[list]) -> None:
    assert as_lists(prompt_schedule(prompt, 10, hires_steps=10)) == expected


def test_the_landscape_example() -> None:
    assert as_lists(prompt_schedule(LANDSCAPE, 100)) == LANDSCAPE_SCHEDULE


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        # a "." makes `when` a fraction, whatever its size; without one it counts steps
        ("[a:b:0.5]", 4, [[2, "a"], [4, "b"]]),
        ("[a:b:1.0]", 10, [[10, "a"]]),
        ("[a:b:2]", 4, [[2, "a"], [4, "b"]]),
        ("[a:b:20]", 4, [[4, "a"]]),
        ("[a:b:0]", 4, [[4, "b"]]),
        ("[a:b:-1]", 4, [[4, "b"]]),
        ("[a:b:1e999]", 4, [[4, "a"]]),
        ("[a::2]", 4, [[2, "a"], [4, ""]]),
        ("[ a : b : 2 ]", 4, [[2, " a "], [4, " b "]]),
        ("[[a|b]:c:3]", 4, [[1, "a"], [2, "b"], [3, "a"], [4, "c"]]),
        ("[a:b:2][c|d]", 4, [[1, "ac"], [2, "ad"], [3, "bc"], [4, "bd"]]),
        ("(red [fox:cat:2]:1.2)", 4, [[2, "(red fox:1.2)"], [4, "(red cat:1.2)"]]),
        # what does not fit the grammar is literal text throughout, as in A1111
        ("[a|b:2]", 4, [[4, "[a|b:2]"]]),
        ("a | [b:c:2]", 4, [[4, "a | [b:c:2]"]]),
        ("a [b:c:2] \\", 4, [[4, "a [b:c:2] \\"]]),
        ("a \\[b:c:2\\]", 4, [[4, "a \\[b:c:2\\]"]]),
        ("[a:b:x]", 4, [[4, "[a:b:x]"]]),
        ("", 4, [[4, ""]]),
    ],
)
def test_more_schedules(prompt: str, steps: int, expected: list[list]) -> None:
    assert as_lists(prompt_schedule(prompt, steps)) == expected


def test_text_at_counts_steps_from_zero() -> None:
    alternate = prompt_schedule("[a|b|c]", 5)
    assert [text_at(alternate, i) for i in range(5)] == ["a", "b", "c", "a", "b"]
    edit = prompt_schedule("[a:b:2]", 4)
    assert [text_at(edit, i) for i in range(4)] == ["a", "a", "b", "b"]
    # a pass that runs past its schedule (a second-order sampler's last call) keeps the end
    assert text_at(edit, 9) == "b"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("a [b:c:2]", True), ("[a|b]", True), ("[a:b:99]", True), ("a [b] (c:1.2)", False),
     ("a [unbalanced", False), ("[a|b:2]", False), ("plain", False)],
)
def test_has_schedule(prompt: str, expected: bool) -> None:
    assert has_schedule(prompt) is expected


def test_no_prompt_raises_and_plain_prompts_are_unchanged() -> None:
    rnd = random.Random(7)
    pieces = ["[", "]", "(", ")", ":", "|", "\\", "a", " ", "2", ".5", "-1", "\n", "BREAK"]
    for _ in range(3000):
        prompt = "".join(rnd.choice(pieces) for _ in range(rnd.randrange(0, 16)))
        for steps, hires in ((1, None), (4, None), (10, 6)):
            schedule = prompt_schedule(prompt, steps, hires)
            assert schedule[-1].until_step == (hires or steps)
            if not has_schedule(prompt):
                assert [text for _, text in schedule] == [prompt]


def test_deep_nesting_does_not_exhaust_the_stack() -> None:
    deep = "[" * 5000 + "a:b:2" + "]" * 5000
    assert prompt_schedule(deep, 4)[-1].until_step == 4
    assert prompt_schedule("[" * 10 + "a:b:2" + "]" * 10, 4) == [(2, "[" * 9 + "a" + "]" * 9), (4, "[" * 9 + "b" + "]" * 9)]
