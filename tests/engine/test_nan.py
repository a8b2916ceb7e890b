"""Images are never NaN: the emphasis rescale cannot divide by a zero mean, and an image
whose decoded pixels are not finite is refused with a sentence instead of saved black."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kakumei.cli import main
from kakumei.engine.prompts import PromptChunk, TextEncoderSlot, _encode_chunk, encode_prompts
from kakumei.errors import KakumeiError, NonFiniteImage
from kakumei.schemas import GenerationRequest


def small(**kw) -> GenerationRequest:
    base = {"prompt": "a lighthouse at dusk, oil painting", "steps": 2, "width": 64, "height": 64, "seed": 1}
    return GenerationRequest(**{**base, **kw})


class _ZeroMeanEncoder:
    """A text encoder whose hidden states average to exactly zero, as a layer norm with
    untrained weights (the tiny model) or a text-encoder LoRA can give."""

    def __call__(self, ids: torch.Tensor, output_hidden_states: bool = True) -> SimpleNamespace:
        z = torch.tensor([[[1.0, -1.0], [2.0, -2.0], [0.5, -0.5]]])
        return SimpleNamespace(last_hidden_state=z, hidden_states=(z, z))

    def get_input_embeddings(self) -> None:  # no textual-inversion fixes in these chunks
        return None


def _slot() -> TextEncoderSlot:
    return TextEncoderSlot(tokenizer=None, text_encoder=_ZeroMeanEncoder(), name="clip_l", sdxl=False)


def test_unweighted_chunk_with_zero_mean_is_left_as_it_is() -> None:
    z, _ = _encode_chunk(_slot(), PromptChunk(tokens=[0, 1, 2], multipliers=[1.0, 1.0, 1.0]), 1, torch.device("cpu"))
    assert torch.equal(z, _ZeroMeanEncoder()(None).last_hidden_state)


def test_weighted_chunk_whose_mean_becomes_zero_stays_finite() -> None:
    # weights 1, 1.1, 1 on a zero-mean state keep the mean at zero: 0 / 0 before the guard
    z, _ = _encode_chunk(_slot(), PromptChunk(tokens=[0, 1, 2], multipliers=[1.0, 1.1, 1.0]), 1, torch.device("cpu"))
    assert torch.isfinite(z).all()
    assert torch.allclose(z[0, 1], torch.tensor([2.2, -2.2]))


@pytest.mark.parametrize(
    "prompt",
    ["a lighthouse at dusk, oil painting", "a castle on a hill, (dramatic lighting:1.3), [fog]", ""],
)
def test_tiny_model_encodings_are_finite(engine, prompt: str) -> None:
    model = engine.load("kakumei:tiny")
    (encoded,), _ = encode_prompts(model.pipe, [prompt])
    assert torch.isfinite(encoded.embeds).all()


def test_readme_example_makes_a_real_image(engine) -> None:
    image = engine.generate(small()).images[0]
    pixels = np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"))
    assert pixels.std() > 1.0  # not a flat black square


@pytest.fixture
def nan_decoder(monkeypatch):
    """Every VAE decode gives NaN pixels, as an fp16 VAE overflowing does."""
    from diffusers.models.autoencoders.vae import Decoder

    real = Decoder.forward

    def forward(self, *args, **kwargs):
        return real(self, *args, **kwargs) * float("nan")

    monkeypatch.setattr(Decoder, "forward", forward)


def test_nan_image_is_refused_with_a_sentence(engine, nan_decoder) -> None:
    with pytest.raises(NonFiniteImage) as caught:
        engine.generate(small(prompt="a red fox in snow"))
    assert isinstance(caught.value, KakumeiError)
    message = str(caught.value)
    assert "\n" not in message and message.count(". ") == 0
    assert "NaN" in message


def test_cli_saves_no_nan_image(cli_env, monkeypatch, capsys, nan_decoder) -> None:
    for key in ("KAKUMEI_HOME", "KAKUMEI_MODEL", "KAKUMEI_OUTPUT_DIR"):
        monkeypatch.setenv(key, cli_env[key])
    code = main(["generate", "a red fox in snow", "--steps", "2", "-W", "64", "-H", "64", "--seed", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and "NaN" in err
    assert "RuntimeWarning" not in err
    assert not list(Path(cli_env["KAKUMEI_OUTPUT_DIR"]).glob("*.png"))
