"""A1111 prompt editing `[from:to:when]` and alternation `[a|b]`: a prompt and a step count
become the plain prompt text (emphasis syntax kept) that each denoising step uses.

Pure Python, outside the engine, so that schemas.py can tell a scheduled prompt (which runs
alone, never in a shared batch) without importing torch. The grammar is A1111's
(modules/prompt_parser.py), parsed here by hand:

    whole:     (prompt | a stray "[", "]", "(", ")" or ":")*
    prompt:    (emphasis | scheduled | alternate | plain text)*
    emphasis:  "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled: "[" [prompt ":"] prompt ":" NUMBER "]"     (spaces allowed around NUMBER)
    alternate: "[" prompt ("|" [prompt])+ "]"
    plain:     any character but \\ [ ] ( ) : |, or \\ and the character after it

A prompt that does not fit the grammar (a "|" outside an alternation, a lone "\\" at the
end) is taken as literal text for every step, as A1111 takes it; nothing here raises.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple, Union

# lark's SIGNED_NUMBER, which A1111's grammar uses: 3, -2, .5, 1., 1e3, 2.5E-1
_NUMBER = re.compile(r"[+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+)")
_WHEN = re.compile(r"\s*(" + _NUMBER.pattern + r")\s*\]")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_STRAY = frozenset("[]():")
# Brackets nested deeper than this are taken as text: a hand parser recurses, and a
# 10,000-character prompt of "[" must not exhaust the stack. No real prompt nests this deep.
MAX_NESTING = 64


@dataclass(frozen=True)
class _Scheduled:
    before: list[_Node] | None  # None for [to:when]
    after: list[_Node]
    when: str  # the number as written: a "." makes it a fraction of the steps


@dataclass(frozen=True)
class _Alternate:
    options: list[list[_Node]]


_Node = Union[str, _Scheduled, _Alternate]


class ScheduledText(NamedTuple):
    """One entry of a prompt schedule: `text` is used for steps up to `until_step` (1-based,
    inclusive), after the steps of the entry before it."""

    until_step: int
    text: str


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        # a bracket's parse, by position: the top level retries a failed one as plain text
        self.constructs: dict[int, tuple[list[_Node], int] | None] = {}

    def whole(self) -> list[_Node] | None:
        nodes: list[_Node] = []
        pos, end = 0, len(self.text)
        while pos < end:
            parsed, pos = self.prompt(pos, 0)
            nodes += parsed
            if pos == end:
                break
            if self.text[pos] not in _STRAY:
                return None  # "|" outside an alternation, or "\" with nothing to escape
            nodes.append(self.text[pos])
            pos += 1
        return nodes

    def prompt(self, pos: int, depth: int) -> tuple[list[_Node], int]:
        """The longest prompt from `pos`: text and complete brackets."""
        nodes: list[_Node] = []
        text = self.text
        while pos < len(text):
            m = _PLAIN.match(text, pos)
            if m is not None:
                nodes.append(m.group())
                pos = m.end()
                continue
            if text[pos] not in "[(":
                break
            construct = self.construct(pos, depth + 1)
            if construct is None:
                break
            nodes += construct[0]
            pos = construct[1]
        return nodes, pos

    def construct(self, pos: int, depth: int) -> tuple[list[_Node], int] | None:
        if pos not in self.constructs:
            self.constructs[pos] = None if depth > MAX_NESTING else self._construct(pos, depth)
        return self.constructs[pos]

    def _construct(self, start: int, depth: int) -> tuple[list[_Node], int] | None:
        text = self.text
        opening = text[start]
        first, pos = self.prompt(start + 1, depth)
        nxt = text[pos : pos + 1]
        if opening == "(":
            if nxt == ")":
                return ["(", *first, ")"], pos + 1
            if nxt == ":":
                second, pos = self.prompt(pos + 1, depth)
                if text[pos : pos + 1] == ")":
                    return ["(", *first, ":", *second, ")"], pos + 1
            return None
        if nxt == "]":
            return ["[", *first, "]"], pos + 1
        if nxt == "|":
            options = [first]
            while text[pos : pos + 1] == "|":
                option, pos = self.prompt(pos + 1, depth)
                options.append(option)
            if text[pos : pos + 1] != "]":
                return None
            return [_Alternate(options)], pos + 1
        if nxt != ":":
            return None
        when = _WHEN.match(text, pos + 1)
        if when is not None:  # [to:when]
            return [_Scheduled(None, first, when.group(1))], when.end()
        second, pos = self.prompt(pos + 1, depth)
        when = _WHEN.match(text, pos + 1) if text[pos : pos + 1] == ":" else None
        if when is None:
            return None
        return [_Scheduled(first, second, when.group(1))], when.end()


def _parse(prompt: str) -> list[_Node] | None:
    return _Parser(prompt).whole()


def _walk(nodes: list[_Node]) -> list[_Scheduled | _Alternate]:
    """Every scheduled and alternate node, nested ones too."""
    found: list[_Scheduled | _Alternate] = []
    stack = [nodes]
    while stack:
        for node in stack.pop():
            if isinstance(node, _Scheduled):
                found.append(node)
                stack += [node.after] + ([node.before] if node.before is not None else [])
            elif isinstance(node, _Alternate):
                found.append(node)
                stack += node.options
    return found


def has_schedule(prompt: str) -> bool:
    """Whether the prompt edits itself during denoising (any [from:to:when] or [a|b])."""
    if "[" not in prompt:
        return False
    nodes = _parse(prompt)
    return nodes is not None and bool(_walk(nodes))


def _when_step(when: str, steps: int, base_steps: int, hires: bool) -> int:
    """A1111's reading of `when`: written with a "." it is a fraction of the steps, else a
    step count; in a hires pass, fractions count on from 1.0 and steps from the base steps."""
    value = float(when)
    if "." in when:
        value = (value - (1.0 if hires else 0.0)) * steps
    else:
        value -= base_steps if hires else 0
    if math.isinf(value):  # "1e999"
        return steps if value > 0 else 0
    return min(steps, int(value))


def _render(nodes: list[_Node], step: int, whens: dict[int, int]) -> str:
    out: list[str] = []
    stack: list[_Node] = list(reversed(nodes))
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            branch = (node.before or []) if step <= whens[id(node)] else node.after
            stack += reversed(branch)
        else:
            stack += reversed(node.options[(step - 1) % len(node.options)])
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[ScheduledText]:
    """The prompt's schedule over `steps` steps, as A1111's
    get_learned_conditioning_prompt_schedules gives it for one prompt: entries sorted by
    `until_step`, the last one ending at the pass's steps.

    With `hires_steps`, the schedule of a hires fix's second pass of that many steps after
    `steps` base steps: a `when` of 15 (steps) or 1.5 (fractions) falls in its middle when
    both passes have 10 steps, and edits that ended in the base pass hold throughout.
    """
    total = steps if hires_steps is None else hires_steps
    nodes = _parse(prompt) if "[" in prompt else None
    if nodes is None:
        return [ScheduledText(total, prompt)]
    whens: dict[int, int] = {}
    until = {total}
    for node in _walk(nodes):
        if isinstance(node, _Scheduled):
            whens[id(node)] = _when_step(node.when, total, steps, hires_steps is not None)
            if whens[id(node)] >= 1:
                until.add(whens[id(node)])
        else:
            until.update(range(1, total + 1))
    return [ScheduledText(t, _render(nodes, t, whens)) for t in sorted(until)]


def text_at(schedule: list[ScheduledText], step: int) -> str:
    """The text for denoising step `step`, counted from 0: the entry whose range holds step
    `step + 1` in A1111's 1-based counting, so [a|b] gives a, b, a, ... and [a:b:2] gives a
    for two steps."""
    for entry in schedule:
        if step + 1 <= entry.until_step:
            return entry.text
    return schedule[-1].text
