"""AUTOMATIC1111 prompt syntax: `(word)`, `(word:1.3)`, `[word]`, `\\(` escapes, `BREAK`,
prompts longer than 77 tokens (75-token chunks), `<lora:name:0.8>` tags and textual-inversion
embeddings, encoded into the conditioning tensors the pipelines take.

The parsing and chunking follow A1111's `prompt_parser.parse_prompt_attention` and
`sd_hijack_clip` (emphasis mode "Original"), so that a prompt copied from A1111 means the same
thing here. diffusers' own `encode_prompt` truncates at 77 tokens and ignores weights, which is
why kakumei encodes prompts itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from kakumei.errors import InvalidRequest

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
CHUNK_LENGTH = 75  # tokens per chunk, plus BOS and EOS = CLIP's 77
# A1111's "comma padding backtrack": a chunk that fills up within this many tokens of a comma
# moves the words after the comma into the next chunk, so a phrase is not cut in half.
COMMA_BACKTRACK = 20

_RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# A1111's extra-network tags: <lora:name:te_weight[:unet_weight]>, <hypernet:...>, ...
_RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs; BREAK comes out as ("BREAK", -1).

    >>> parse_prompt_attention('an (important) word')
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    res: list[list[Any]] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _RE_ATTENTION.finditer(text):
        part = m.group(0)
        weight = m.group(1)
        if part.startswith("\\"):
            res.append([part[1:], 1.0])
        elif part == "(":
            round_brackets.append(len(res))
        elif part == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif part == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif part == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            for i, piece in enumerate(_RE_BREAK.split(part)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([piece, 1.0])
    # Unbalanced brackets apply to the end of the prompt, as in A1111.
    for pos in round_brackets:
        multiply_range(pos, ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):  # merge runs of equal weight
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(str(t), float(w)) for t, w in res]


@dataclass(frozen=True)
class LoraTag:
    name: str
    te_weight: float
    unet_weight: float

    def __str__(self) -> str:
        return f"<lora:{self.name}:{self.te_weight:g}>"


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """Remove `<lora:name:w>` tags from a prompt; other extra-network tags are refused,
    since kakumei has nothing that would apply them."""
    tags: list[LoraTag] = []

    def take(m: re.Match[str]) -> str:
        kind, args = m.group(1), m.group(2).split(":")
        if kind not in ("lora", "lyco"):
            raise InvalidRequest(f"<{kind}:...> in the prompt is not supported; kakumei applies <lora:name:weight> tags")
        name = args[0].strip()
        try:
            te = float(args[1]) if len(args) > 1 and args[1].strip() else 1.0
            unet = float(args[2]) if len(args) > 2 and args[2].strip() else te
        except ValueError:
            raise InvalidRequest(
                f"<{m.group(0)[1:-1]}> has a weight that is not a number; write it as <lora:name:0.8>"
            ) from None
        if not name:
            raise InvalidRequest("a <lora:...> tag has no name; write it as <lora:name:0.8>")
        tags.append(LoraTag(name, te, unet))
        return ""

    return _RE_EXTRA_NETWORK.sub(take, prompt), tags


# --- tokens -------------------------------------------------------------------------------


@dataclass
class PromptChunk:
    """77 token ids (BOS, 75 tokens, EOS) with a weight each, and where embeddings go."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (position, vectors)


class EmbeddingLookup:
    """Textual-inversion embeddings by the token ids of their names, for one tokenizer."""

    def __init__(self, tokenizer: Any, vectors_by_name: dict[str, torch.Tensor]) -> None:
        self._by_first: dict[int, list[tuple[list[int], str, torch.Tensor]]] = {}
        for name, vectors in vectors_by_name.items():
            ids = tokenizer(name, add_special_tokens=False).input_ids
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, name, vectors))
        for entries in self._by_first.values():
            entries.sort(key=lambda e: len(e[0]), reverse=True)  # longest name wins
        self.used: dict[str, torch.Tensor] = {}

    def find(self, tokens: Sequence[int], position: int) -> tuple[str, torch.Tensor, int] | None:
        for ids, name, vectors in self._by_first.get(tokens[position], ()):
            if list(tokens[position : position + len(ids)]) == ids:
                self.used[name] = vectors
                return name, vectors, len(ids)
        return None


def tokenize_chunks(tokenizer: Any, prompt: str, embeddings: EmbeddingLookup | None = None) -> list[PromptChunk]:
    """A1111's tokenize_line: weighted 75-token chunks, BREAK starts a new chunk."""
    parsed = parse_prompt_attention(prompt)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.get_vocab().get(",</w>")
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    last_comma = -1

    def next_chunk() -> None:
        nonlocal chunk, last_comma
        to_add = CHUNK_LENGTH - len(chunk.tokens)
        chunk.tokens = [bos] + chunk.tokens + [eos] + [pad] * to_add
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0] * (to_add + 1)
        chunk.fixes = [(pos + 1, vec) for pos, vec in chunk.fixes]  # shifted by BOS
        chunks.append(chunk)
        chunk = PromptChunk()
        last_comma = -1

    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        tokens = tokenizer(text, add_special_tokens=False).input_ids if text else []
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (
                len(chunk.tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK
            ):
                cut = last_comma + 1
                moved_tokens, moved_mults = chunk.tokens[cut:], chunk.multipliers[cut:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                next_chunk()
                chunk.tokens, chunk.multipliers = moved_tokens, moved_mults
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            found = embeddings.find(tokens, position) if embeddings is not None else None
            if found is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue
            name, vectors, name_length = found
            count = int(vectors.shape[0])
            if count > CHUNK_LENGTH:
                raise InvalidRequest(f"embedding {name!r} has {count} vectors; at most {CHUNK_LENGTH} fit in a prompt")
            if len(chunk.tokens) + count > CHUNK_LENGTH:
                next_chunk()
            chunk.fixes.append((len(chunk.tokens), vectors))
            chunk.tokens += [pad] * count
            chunk.multipliers += [weight] * count
            position += name_length
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks


def token_count(tokenizer: Any, prompt: str) -> int:
    """Tokens the prompt uses, as A1111's counter above the prompt box shows it."""
    text, _ = extract_lora_tags(prompt)
    return sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t, w in parse_prompt_attention(text) if w != -1 and t)


# --- encoding -----------------------------------------------------------------------------


@dataclass
class EncodedPrompt:
    embeds: torch.Tensor  # (1, 77 * chunks, dim)
    pooled: torch.Tensor | None  # (1, dim2) for SDXL, None for SD 1/2


@contextmanager
def _embedding_fixes(text_encoder: Any, fixes: list[tuple[int, torch.Tensor]]) -> Iterator[None]:
    """Put textual-inversion vectors into the token embeddings of one 77-token chunk,
    as A1111's EmbeddingsWithFixes does: the hook replaces rows after the lookup."""
    if not fixes:
        yield
        return
    module = text_encoder.get_input_embeddings()

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for pos, vectors in fixes:
            vec = vectors.to(output.device, output.dtype)
            output[:, pos : pos + vec.shape[0]] = vec
        return output

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class TextEncoderSlot:
    """One tokenizer + text encoder of a pipeline, and which layer it contributes."""

    tokenizer: Any
    text_encoder: Any
    name: str  # "clip_l" | "clip_g": which half of an SDXL embedding file it takes
    sdxl: bool  # SDXL takes a penultimate layer without the final layer norm


def pipeline_encoders(pipe: Any) -> list[TextEncoderSlot]:
    """The text encoders of a diffusers SD 1/2/XL pipeline (the SDXL refiner has only the second)."""
    slots = []
    sdxl = hasattr(pipe, "text_encoder_2")
    if getattr(pipe, "text_encoder", None) is not None:
        slots.append(TextEncoderSlot(pipe.tokenizer, pipe.text_encoder, "clip_l", sdxl))
    if sdxl and getattr(pipe, "text_encoder_2", None) is not None:
        slots.append(TextEncoderSlot(pipe.tokenizer_2, pipe.text_encoder_2, "clip_g", True))
    return slots


def _final_layer_norm(text_encoder: Any) -> Any:
    # transformers 4 nests it under .text_model; transformers 5 flattens the model.
    inner = getattr(text_encoder, "text_model", text_encoder)
    norm = getattr(inner, "final_layer_norm", None)
    if norm is None:
        norm = next(m for n, m in text_encoder.named_modules() if n.endswith("final_layer_norm"))
    return norm


def _encode_chunk(slot: TextEncoderSlot, chunk: PromptChunk, clip_skip: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.tensor([chunk.tokens], device=device)
    with _embedding_fixes(slot.text_encoder, chunk.fixes):
        out = slot.text_encoder(ids, output_hidden_states=True)
    if slot.sdxl:
        # SDXL was trained on the penultimate layer; clip_skip counts on from there.
        z = out.hidden_states[-(clip_skip + 1)]
        pooled = getattr(out, "text_embeds", None)
    elif clip_skip > 1:
        z = _final_layer_norm(slot.text_encoder)(out.hidden_states[-clip_skip])
        pooled = None
    else:
        z = out.last_hidden_state
        pooled = None
    return _emphasis(z, chunk.multipliers), pooled


def _emphasis(z: torch.Tensor, multipliers: list[float]) -> torch.Tensor:
    """A1111 "Original" emphasis: scale each token, then restore the chunk's mean so that
    weights change direction, not overall magnitude.

    A chunk without weights is returned as it is: the rescale would be mean / mean, which is
    1 exactly, or 0 / 0 = NaN when the hidden states average to zero (a layer norm with
    untrained weights, some text-encoder LoRAs). A weighted chunk whose mean becomes zero
    keeps its weights without the rescale, for the same reason.
    """
    if all(m == 1.0 for m in multipliers):
        return z
    weights = torch.tensor(multipliers, device=z.device, dtype=z.dtype).reshape(1, -1, 1)
    original_mean = z.mean()
    z = z * weights
    ratio = original_mean / z.mean()
    # torch.where, not an `if`: no device sync on a GPU for the common case
    return z * torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))


def encode_prompts(
    pipe: Any,
    prompts: Sequence[str],
    clip_skip: int = 1,
    embeddings: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[list[EncodedPrompt], list[str]]:
    """Encode prompts (LoRA tags already removed) to equal-length conditioning.

    All prompts get the same number of chunks (padded with the empty prompt, as A1111 pads
    the shorter of prompt and negative prompt), so they can be batched together.
    Returns the encodings and the names of the embeddings used.
    """
    slots = pipeline_encoders(pipe)
    if not slots:
        raise InvalidRequest("this model has no text encoder kakumei can use")
    device = slots[0].text_encoder.device
    used: dict[str, None] = {}
    per_slot_chunks: list[list[list[PromptChunk]]] = []
    for slot in slots:
        vectors = {name: by_slot[slot.name] for name, by_slot in (embeddings or {}).items() if slot.name in by_slot}
        width = slot.text_encoder.get_input_embeddings().embedding_dim
        for name, vec in vectors.items():
            if vec.shape[-1] != width:
                raise InvalidRequest(
                    f"embedding {name!r} has vectors of width {vec.shape[-1]}, but this model's text encoder takes "
                    f"{width}; it was made for another architecture"
                )
        lookup = EmbeddingLookup(slot.tokenizer, vectors) if vectors else None
        chunked = [tokenize_chunks(slot.tokenizer, p, lookup) for p in prompts]
        if lookup is not None:
            used.update(dict.fromkeys(lookup.used))
        per_slot_chunks.append(chunked)
    # Both SDXL tokenizers share the BPE vocabulary, so chunk counts agree across slots.
    count = max(len(c) for chunked in per_slot_chunks for c in chunked)
    results: list[EncodedPrompt] = []
    for p_index in range(len(prompts)):
        per_slot_z: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for slot, chunked in zip(slots, per_slot_chunks):
            chunks = chunked[p_index]
            chunks = chunks + tokenize_chunks(slot.tokenizer, "") * (count - len(chunks))
            zs = []
            for i, chunk in enumerate(chunks):
                z, chunk_pooled = _encode_chunk(slot, chunk, clip_skip, device)
                zs.append(z)
                if i == 0 and chunk_pooled is not None:
                    pooled = chunk_pooled  # A1111 pools the first chunk only
            per_slot_z.append(torch.cat(zs, dim=1))
        results.append(EncodedPrompt(torch.cat(per_slot_z, dim=-1), pooled))
    return results, list(used)
