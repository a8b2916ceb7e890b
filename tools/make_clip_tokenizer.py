"""Derive the CLIP tokenizer files (vocab.json, merges.txt) that ship in
src/kakumei/engine/configs/clip_tokenizer/ from OpenAI's public BPE vocabulary.

The BPE file is `open_clip/bpe_simple_vocab_16e6.txt.gz` inside the open_clip_torch wheel
(`pip download --no-deps open_clip_torch`). The vocabulary order reproduces CLIP's
SimpleTokenizer, which is the order of openai/clip-vit-large-patch14's vocab.json (49408 ids).

usage: python tools/make_clip_tokenizer.py WHEEL_OR_GZ OUT_DIR
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def main(source: str, out_dir: str) -> None:
    if source.endswith(".whl"):
        raw = zipfile.ZipFile(source).read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    else:
        raw = Path(source).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
