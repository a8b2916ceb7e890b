"""A1111 prompt syntax: parsing against the examples in A1111's own documentation, chunking
of long prompts, BREAK, LoRA tags, and that weights reach the conditioning."""

from __future__ import annotations

import pytest
import torch

from kakumei.engine.prompts import (
    CHUNK_LENGTH,
    LoraTag,
    encode_prompts,
    extract_lora_tags,
    parse_prompt_attention,
    tokenize_chunks,
)
from kakumei.engine.tiny import build_tiny_pipeline, clip_tokenizer
from kakumei.errors import InvalidRequest

# The docstring examples of A1111's modules/prompt_parser.py::parse_prompt_attention.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
    # From the A1111 wiki's "Attention/emphasis" section.
    ("a (word:1.5)", [("a ", 1.0), ("word", 1.5)]),
    ("a [word]", [("a ", 1.0), ("word", 1 / 1.1)]),
    ("a ((word))", [("a ", 1.0), ("word", 1.1 * 1.1)]),
    ("a (word:0.25)", [("a ", 1.0), ("word", 0.25)]),
    ("a cat BREAK a dog", [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]),
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_EXAMPLES)
def test_parse_prompt_attention_matches_a1111(prompt: str, expected: list[tuple[str, float]]) -> None:
    got = parse_prompt_attention(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@pytest.mark.parametrize(
    ("prompt", "text", "tags"),
    [
        ("a fox <lora:fur:0.8>", "a fox ", [LoraTag("fur", 0.8, 0.8)]),
        ("<lora:a b-c:1>x<lora:d:0.5:0.2>", "x", [LoraTag("a b-c", 1.0, 1.0), LoraTag("d", 0.5, 0.2)]),
        ("<lora:plain>", "", [LoraTag("plain", 1.0, 1.0)]),
        ("no tags (here:1.2)", "no tags (here:1.2)", []),
    ],
)
def test_lora_tags_are_extracted(prompt: str, text: str, tags: list[LoraTag]) -> None:
    assert extract_lora_tags(prompt) == (text, tags)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("<lora:x:much>", "not a number"), ("<hypernet:x:1>", "not supported"), ("<lora::1>", "no name")],
)
def test_bad_tags_say_what_is_wrong(prompt: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        extract_lora_tags(prompt)


def test_short_prompt_is_one_chunk_of_77() -> None:
    tok = clip_tokenizer()
    chunks = tokenize_chunks(tok, "a red fox")
    assert len(chunks) == 1
    assert len(chunks[0].tokens) == CHUNK_LENGTH + 2
    assert chunks[0].tokens[0] == tok.bos_token_id
    # same ids as the tokenizer's own padding to 77
    assert chunks[0].tokens == tok("a red fox", padding="max_length", max_length=77).input_ids


def test_long_prompt_is_chunked_not_truncated() -> None:
    tok = clip_tokenizer()
    prompt = " ".join(["fox"] * 100)
    chunks = tokenize_chunks(tok, prompt)
    assert len(chunks) == 2
    body = [t for c in chunks for t in c.tokens[1:-1] if t != tok.pad_token_id and t != tok.eos_token_id]
    assert len(body) == 100


def test_comma_backtrack_keeps_a_phrase_together() -> None:
    tok = clip_tokenizer()
    prompt = " ".join(["fox"] * 70) + ", red snowy forest at night"
    first, second = tokenize_chunks(tok, prompt)
    words = tok.decode(second.tokens[1:], skip_special_tokens=True)
    assert words.startswith("red snowy forest")


def test_break_starts_a_new_chunk_and_openclip_pads_with_bang() -> None:
    tok = clip_tokenizer(open_clip=True)
    chunks = tokenize_chunks(tok, "a cat BREAK a dog")
    assert len(chunks) == 2
    assert chunks[0].tokens[-1] == tok.convert_tokens_to_ids("!")


def test_weights_are_per_token() -> None:
    tok = clip_tokenizer()
    (chunk,) = tokenize_chunks(tok, "a (red:1.5) fox")
    assert chunk.multipliers[:5] == pytest.approx([1.0, 1.0, 1.5, 1.0, 1.0])


@pytest.fixture(scope="module")
def sd1_pipe():
    return build_tiny_pipeline("sd1")


def test_emphasis_changes_the_conditioning(sd1_pipe) -> None:
    (plain, weighted), _ = encode_prompts(sd1_pipe, ["a red fox", "a (red:1.5) fox"])
    assert plain.embeds.shape == (1, 77, 32)
    assert not torch.allclose(plain.embeds, weighted.embeds)


def test_unweighted_encoding_equals_diffusers(sd1_pipe) -> None:
    """With no weights and under 77 tokens, kakumei's encoding is diffusers' own."""
    (ours,), _ = encode_prompts(sd1_pipe, ["a red fox in snow"])
    theirs, _ = sd1_pipe.encode_prompt("a red fox in snow", "cpu", 1, False)
    assert torch.allclose(ours.embeds, theirs, atol=1e-6)


def test_long_and_short_prompts_are_padded_to_equal_length(sd1_pipe) -> None:
    (long, short), _ = encode_prompts(sd1_pipe, [" ".join(["fox"] * 100), ""])
    assert long.embeds.shape == short.embeds.shape == (1, 154, 32)


def test_clip_skip_takes_an_earlier_layer(sd1_pipe) -> None:
    (one,), _ = encode_prompts(sd1_pipe, ["a red fox"], clip_skip=1)
    (two,), _ = encode_prompts(sd1_pipe, ["a red fox"], clip_skip=2)
    assert not torch.allclose(one.embeds, two.embeds)


def test_sdxl_encoding_concatenates_both_encoders_and_pools() -> None:
    pipe = build_tiny_pipeline("sdxl")
    (enc,), _ = encode_prompts(pipe, ["a red fox"])
    assert enc.embeds.shape == (1, 77, 16 + 32)
    assert enc.pooled is not None and enc.pooled.shape == (1, 32)
