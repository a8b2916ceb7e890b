"""Single-file checkpoints (A1111 / ComfyUI `.safetensors`, `.ckpt` with permission):
detect the architecture from the tensor names and shapes, and load fully offline with the
diffusers-layout configs and tokenizer files kakumei carries (no hub access).

The configs are the public diffusers configs of each architecture, kept here as data and
written into a cache folder on first use, with the bundled CLIP tokenizer beside them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kakumei.engine.checkpoints import PICKLE_SUFFIXES, _pickle_refused, read_state_dict, safetensors_keys
from kakumei.engine.weights import (
    STREAMED_COMPONENTS,
    STREAMED_TEXT_ENCODERS,
    WeightCache,
    build_component,
    build_text_encoder,
)
from kakumei.errors import ModelLoadError

ARCHITECTURES = ("sd1", "sd1-inpaint", "sd2", "sd2-v", "sd2-inpaint", "sdxl", "sdxl-inpaint", "sdxl-refiner")
SINGLE_FILE_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES

_UNET = "model.diffusion_model."
_KEY_V2 = _UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
_KEY_XL_BASE = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
_KEY_XL_REFINER = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"
_KEY_CONV_IN = _UNET + "input_blocks.0.0.weight"
# A1111 writes this into checkpoints it saves; kakumei writes it into the tiny ones.
_ARCH_METADATA_KEY = "modelspec.architecture"


def checkpoint_shapes(path: Path, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes, from the header alone for .safetensors."""
    if path.suffix.lower() == ".safetensors":
        return safetensors_keys(path, f"checkpoint {path.name}")
    if not allow_pickle:
        raise _pickle_refused(path, f"checkpoint {path.name}")
    return {k: tuple(v.shape) for k, v in read_state_dict(path, allow_pickle, f"checkpoint {path.name}").items() if hasattr(v, "shape")}


def detect_architecture(shapes: dict[str, tuple[int, ...]], name: str = "the checkpoint") -> str:
    """One of ARCHITECTURES, from the tensors (the same keys diffusers and A1111 look at).

    SD 2 checkpoints do not say whether they predict noise or velocity; kakumei takes the
    768-pixel v-prediction model as SD 2 unless the name says "512" or "base".
    """
    if _KEY_CONV_IN not in shapes:
        raise ModelLoadError(
            f"{name} is not a Stable Diffusion checkpoint kakumei knows (no UNet in it); "
            "kakumei loads SD 1.x, SD 2.x and SDXL single files"
        )
    inpaint = shapes[_KEY_CONV_IN][1] == 9
    if _KEY_XL_REFINER in shapes and _KEY_XL_BASE not in shapes:
        return "sdxl-refiner"
    if _KEY_XL_BASE in shapes or any(k.startswith("conditioner.embedders.1.") for k in shapes):
        return "sdxl-inpaint" if inpaint else "sdxl"
    if shapes.get(_KEY_V2, (0,))[-1] == 1024 or any(k.startswith("cond_stage_model.model.") for k in shapes):
        if inpaint:
            return "sd2-inpaint"
        lowered = name.lower()
        return "sd2" if ("512" in lowered or "base" in lowered) else "sd2-v"
    return "sd1-inpaint" if inpaint else "sd1"


def is_full_size(shapes: dict[str, tuple[int, ...]]) -> bool:
    """Real checkpoints start with 320 (SD, SDXL) or 384 (refiner) UNet channels; anything
    else is a kakumei tiny model, whose config is rebuilt from tiny.py."""
    return shapes[_KEY_CONV_IN][0] in (320, 384)


# --- bundled configs ------------------------------------------------------------------------

_SCHED = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
_CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-05,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
_OPEN_CLIP_H = {**_CLIP_L, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                "num_hidden_layers": 23, "projection_dim": 512, "hidden_act": "gelu"}
_OPEN_CLIP_G = {**_CLIP_L, "architectures": ["CLIPTextModelWithProjection"], "hidden_size": 1280,
                "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
                "projection_dim": 1280, "hidden_act": "gelu"}
_UNET_SD1 = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "sample_size": 64,
}
_UNET_SD2 = {**_UNET_SD1, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
             "use_linear_projection": True, "sample_size": 96}
_UNET_XL = {
    **_UNET_SD1,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
    "sample_size": 128,
}
_UNET_XL_REFINER = {
    **_UNET_XL,
    "attention_head_dim": [6, 12, 24, 24],
    "block_out_channels": [384, 768, 1536, 1536],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": 4,
    "cross_attention_dim": 1280,
    "projection_class_embeddings_input_dim": 2560,
}
_VAE_XL = {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}


def bundled_config(arch: str) -> dict[str, Any]:
    """{"model_index": ..., "<component>": config, ...} for one architecture."""
    inpaint = arch.endswith("-inpaint")
    base = arch.removesuffix("-inpaint")
    sd_index = {"feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False}
    if base == "sd1" or base.startswith("sd2"):
        unet = dict(_UNET_SD1 if base == "sd1" else _UNET_SD2)
        sched = dict(_SCHED)
        if base == "sd2-v":
            sched["prediction_type"] = "v_prediction"
        if base == "sd2" and not inpaint:
            unet["sample_size"] = 64
        te = _CLIP_L if base == "sd1" else _OPEN_CLIP_H
        cls = "StableDiffusionInpaintPipeline" if inpaint else "StableDiffusionPipeline"
        index = {"_class_name": cls, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", "EulerDiscreteScheduler"], **sd_index}
        parts = {"unet": unet, "vae": dict(_VAE), "text_encoder": te, "scheduler": sched}
        tokenizers = {"tokenizer": base != "sd1"}
    else:
        refiner = base == "sdxl-refiner"
        unet = dict(_UNET_XL_REFINER if refiner else _UNET_XL)
        cls = "StableDiffusionXLImg2ImgPipeline" if refiner else ("StableDiffusionXLInpaintPipeline" if inpaint else "StableDiffusionXLPipeline")
        index = {"_class_name": cls, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", "EulerDiscreteScheduler"], "force_zeros_for_empty_prompt": False}
        parts = {"unet": unet, "vae": dict(_VAE_XL), "text_encoder_2": _OPEN_CLIP_G, "scheduler": dict(_SCHED)}
        tokenizers = {"tokenizer_2": True}
        if refiner:
            index.update({"text_encoder": [None, None], "tokenizer": [None, None], "requires_aesthetics_score": True})
        else:
            index.update({"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]})
            parts["text_encoder"] = _CLIP_L
            tokenizers["tokenizer"] = False
    if inpaint:
        parts["unet"]["in_channels"] = 9
    return {"model_index": index, "parts": parts, "tokenizers": tokenizers}


def materialize_config(arch: str, cache_dir: Path) -> Path:
    """Write the config folder for `arch` (once) and return it."""
    from kakumei.engine.tiny import clip_tokenizer

    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    target = cache_dir / "single-file-configs" / f"{arch}-v1"
    if (target / "model_index.json").is_file():
        return target
    spec = bundled_config(arch)
    tmp = target.with_name(target.name + ".tmp")
    for name, config in spec["parts"].items():
        folder = tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        filename = "scheduler_config.json" if name == "scheduler" else "config.json"
        (folder / filename).write_text(json.dumps(config, indent=1))
    for name, open_clip in spec["tokenizers"].items():
        clip_tokenizer(open_clip=open_clip).save_pretrained(tmp / name)
    (tmp / "model_index.json").write_text(json.dumps(spec["model_index"], indent=1))
    tmp.replace(target) if not target.exists() else None
    return target


def tiny_config(arch: str, cache_dir: Path) -> Path:
    """Config folder of a kakumei tiny model of `arch` (for tiny single files)."""
    from kakumei.engine.tiny import TINY_FAMILIES, build_tiny_pipeline

    family = {"sd2": "sd2-v"}.get(arch, arch)
    if family not in TINY_FAMILIES:
        raise ModelLoadError(f"no tiny {arch} model to take a config from")
    target = cache_dir / "single-file-configs" / f"tiny-{family}-v1"
    if not (target / "model_index.json").is_file():
        build_tiny_pipeline(family).save_pretrained(target, safe_serialization=True)
        for weights in target.rglob("*.safetensors"):
            weights.unlink()
    return target


def load_single_file(
    path: Path, cache_dir: Path, dtype: torch.dtype, allow_pickle: bool,
    weight_cache: WeightCache | None = None, channels_last: bool = False,
) -> tuple[Any, str]:
    """Load a single-file checkpoint offline; return (pipeline, architecture).

    With `weight_cache`, the first load keeps each converted component (UNet, VAE, text
    encoders, in `dtype` and layout) there, keyed by the file and the component, and later
    loads build the pipeline from those mapped files: no conversion of the original layout,
    no fp32 copy, and weights the CPU fast path can pack (packing.py)."""
    from diffusers import DiffusionPipeline

    shapes = checkpoint_shapes(path, allow_pickle)
    arch = detect_architecture(shapes, path.name)
    config = materialize_config(arch, cache_dir) if is_full_size(shapes) else tiny_config(arch, cache_dir)
    index = json.loads((config / "model_index.json").read_text())
    import diffusers

    cls: type[DiffusionPipeline] = getattr(diffusers, index["_class_name"])
    parts = [name for name in (*STREAMED_COMPONENTS, *STREAMED_TEXT_ENCODERS)
             if isinstance(index.get(name), list) and index[name][0] is not None]
    if weight_cache is not None:
        pipe = _from_weight_cache(cls, config, index, path, parts, dtype, channels_last, weight_cache)
        if pipe is not None:
            return pipe, arch
    source = path
    if path.suffix.lower() in PICKLE_SUFFIXES:
        # Unpickle once, with the user's permission, and hand diffusers safe tensors.
        from safetensors.torch import save_file

        state = read_state_dict(path, allow_pickle, f"checkpoint {path.name}")
        source = cache_dir / "converted" / (path.stem + ".safetensors")
        source.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}, str(source))
    try:
        pipe = cls.from_single_file(str(source), config=str(config), local_files_only=True, torch_dtype=dtype)
    except Exception as exc:  # diffusers raises many types for missing or misshapen tensors
        raise ModelLoadError(
            f"checkpoint {path.name} looks like {arch} but lacks some of its weights or has them in other shapes, "
            "so it is damaged or only part of a model; download or copy it again"
        ) from exc
    if weight_cache is not None:
        for name in parts:
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in module.state_dict().items()}
                kept = weight_cache.store(path, dtype, channels_last and name in STREAMED_COMPONENTS, state, part=name)
                if kept is not state:  # mapped from the file just written: the private copy goes
                    module.load_state_dict(kept, strict=True, assign=True)
    return pipe, arch


def _from_weight_cache(
    cls: Any, config: Path, index: dict[str, Any], path: Path, parts: list[str],
    dtype: torch.dtype, channels_last: bool, cache: WeightCache,
) -> Any | None:
    """The pipeline of a single file from its components in the weight cache, or None where
    one of them is missing or does not fit (then the file is converted as on a first load)."""
    import diffusers
    import transformers

    components = {}
    for name in parts:
        layout = channels_last and name in STREAMED_COMPONENTS
        tensors = cache.mapped(path, dtype, layout, part=name)
        if tensors is None:
            return None
        library, class_name = index[name]
        if library == "diffusers":
            model = build_component(getattr(diffusers, class_name), config / name, tensors)
        else:
            model = build_text_encoder(getattr(transformers, class_name), config / name, tensors, dtype)
        if model is None:
            return None
        components[name] = model
    extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
    return cls.from_pretrained(str(config), local_files_only=True, dtype=dtype, **extra, **components)


# --- writing (tests, `kakumei models export`) -----------------------------------------------

_RESNET_MAP = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
               ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def _unet_prefix_map(unet: Any) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs, from the UNet's own blocks."""
    pairs = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
    n = len(unet.down_blocks)
    layers = unet.config.layers_per_block
    for i, block in enumerate(unet.down_blocks):
        for j in range(layers):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{3 * i + j + 1}.0."))
            if getattr(block, "attentions", None):
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{3 * i + j + 1}.1."))
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{3 * (i + 1)}.0.op."))
    for i, block in enumerate(unet.up_blocks):
        has_attn = bool(getattr(block, "attentions", None))
        for j in range(layers + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{3 * i + j}.0."))
            if has_attn:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{3 * i + j}.1."))
        if i < n - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{3 * i + 2}.{2 if has_attn else 1}."))
    pairs += [("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.0.", "middle_block.0."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    return pairs


def _renamed(
    state: dict[str, torch.Tensor],
    pairs: list[tuple[str, str]],
    prefix: str,
    inner: Callable[[str, str, torch.Tensor], tuple[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """`state` under LDM names: the first (diffusers prefix, LDM prefix) pair a key starts
    with renames it, `inner` renames the rest of it (and may reshape its tensor)."""
    out = {}
    for key, value in state.items():
        new = key
        for hf, sd in pairs:
            if key.startswith(hf):
                rest, value = inner(hf, key[len(hf) :], value)
                new = sd + rest
                break
        out[prefix + new] = value
    return out


def _unet_inner(hf: str, rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    if "resnets" in hf:
        for a, b in _RESNET_MAP:
            if rest.startswith(b):
                rest = a + rest[len(b) :]
    return rest, value


_VAE_ATTENTION = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]


def _vae_inner(hf: str, rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    if "attentions" in hf:
        for b, a in _VAE_ATTENTION:
            if rest.startswith(b):
                rest = a + rest[len(b) :]
                if value.dim() == 2:  # LDM keeps these as 1x1 convolutions
                    value = value[:, :, None, None]
    return rest.replace("conv_shortcut", "nin_shortcut"), value


def _convert_unet(unet: Any) -> dict[str, torch.Tensor]:
    return _renamed(unet.state_dict(), _unet_prefix_map(unet), _UNET, _unet_inner)


def _convert_vae(vae: Any) -> dict[str, torch.Tensor]:
    pairs: list[tuple[str, str]] = []
    n = len(vae.encoder.down_blocks)
    for i in range(n):
        for j in range(len(vae.encoder.down_blocks[i].resnets)):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        if i < n - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
        for j in range(len(vae.decoder.up_blocks[i].resnets)):
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}."))
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.{k}.", f"{part}.mid.block_{k + 1}.") for k in range(2)]
        pairs += [(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."), (f"{part}.conv_norm_out.", f"{part}.norm_out.")]
    return _renamed(vae.state_dict(), pairs, "first_stage_model.", _vae_inner)


def to_single_file_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """An SD 1.x pipeline's weights in the original (LDM) single-file layout."""
    if hasattr(pipe, "text_encoder_2") or getattr(pipe.tokenizer, "pad_token", None) == "!":
        raise ModelLoadError("writing single files is implemented for SD 1.x models only")
    state = {**_convert_unet(pipe.unet), **_convert_vae(pipe.vae)}
    for key, value in pipe.text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_single_file(pipe: Any, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(to_single_file_state_dict(pipe), str(path))
    return path
