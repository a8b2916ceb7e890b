"""Fast paths that keep the image: memory layout and precision choices per device.

Measured by benchmarks/engine_vs_diffusers.py against plain diffusers in the same run.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 matmuls and
    convolutions run about twice as fast as fp32; elsewhere bf16 is emulated and slower."""
    try:
        if hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported") and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:  # not Linux: no cheap way to tell, stay on fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Below this many UNet parameters bf16 does not pay on a CPU: the tiny test models run
# slower in bf16 (conversion overhead beats the faster kernels), SD 1.5's 860M run ~2x faster.
BF16_MIN_UNET_PARAMS = 100_000_000


def wants_cpu_bf16(device: torch.device, dtype: torch.dtype, auto_dtype: bool, unet_params: int | None) -> bool:
    """Whether a model whose UNet has `unet_params` parameters runs in bf16 here: on a CPU
    with native bf16, when the dtype was left to kakumei, for full-size models."""
    return (
        device.type == "cpu"
        and auto_dtype
        and dtype == torch.float32
        and unet_params is not None
        and unet_params >= BF16_MIN_UNET_PARAMS
        and cpu_has_native_bf16()
    )


def wants_channels_last(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


def apply_fast_path(pipe: Any, device: torch.device, dtype: torch.dtype, auto_dtype: bool) -> torch.dtype:
    """Speed-ups that keep the image; returns the dtype the pipeline ends up in.

    - On a CPU with native bf16, when the dtype was left to kakumei, full-size models move
      to bf16 (PSNR against fp32 is reported by benchmarks/engine_vs_diffusers.py).
    - Channels-last for the convolution-heavy modules: oneDNN (CPU) and cuDNN (GPU) pick
      faster kernels for NHWC; on 2 CPU cores it alone halves the UNet's step time at 256x256.

    models.load_model decides both before loading where it can (`wants_cpu_bf16` from the
    file's header) and reads the weights in that form (weights.py); what is already in the
    target dtype and layout is not copied again here.
    """
    if not wants_channels_last(device):
        return dtype
    unet = getattr(pipe, "unet", None)
    params = sum(p.numel() for p in unet.parameters()) if isinstance(unet, torch.nn.Module) else None
    if wants_cpu_bf16(device, dtype, auto_dtype, params):
        pipe.to(torch.bfloat16)
        dtype = torch.bfloat16
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.to(memory_format=torch.channels_last)
    return dtype


def compile_unet(pipe: Any, device: torch.device) -> None:
    """torch.compile the UNet in place (`nn.Module.compile`, so module names, and with them
    LoRA merging, stay as they are). On CUDA "reduce-overhead" also captures CUDA graphs for
    each fixed shape. Weights are not frozen into the graph, so merged LoRAs take effect."""
    unet = getattr(pipe, "unet", None)
    if isinstance(unet, torch.nn.Module):
        unet.compile(mode="reduce-overhead" if device.type == "cuda" else "default", dynamic=False)
