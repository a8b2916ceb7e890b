"""The `translator` setting naming a local model folder: a tiny random Marian model with a
character tokenizer, built here, stands in for an Opus-MT one (its English is nonsense, but
loading, greedy decoding and the prompt syntax around it are real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kakumei.translate import translate_text, translator_for


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("opus-mt-ja-en")
    words = [*"赤い狐雪の森猫", "red", "fox", "snow"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=48,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1,
    )
    MarianMTModel(config).save_pretrained(folder)
    return folder


def test_a_local_model_translates_the_japanese_runs_only(model_folder: Path) -> None:
    translator = translator_for(str(model_folder))
    first = translate_text("(赤い狐:1.2), snow, <lora:狐:0.5>", translator)
    assert first.text.startswith("(") and first.text.endswith(":1.2), snow, <lora:狐:0.5>")
    assert "赤い狐" not in first.text and first.unknown == ()
    # Greedy decoding: the same prompt, the same English.
    assert translate_text("(赤い狐:1.2), snow, <lora:狐:0.5>", translator) == first
