"""A CPU bf16 UNet's convolution and linear weights packed once in oneDNN's own layout.

In eager mode every bf16 convolution and linear layer on a CPU reorders its weight into the
blocked layout oneDNN computes in, on every call: at 256x256 that is a large part of a UNet
step (the low-resolution layers are mostly reorder). `pack_unet` makes each such layer pack its
weight on its first call and compute from the packed copy afterwards, through the same oneDNN
primitives eager mode uses, so the pixels do not change (tests/engine/test_packing.py holds
them equal to eager mode's, bit for bit).

A packed copy is as large as the weight, so only weights that are views of the weight cache's
copy-on-write mapping are packed (a diffusers folder's, a single file's or a downloaded hub
model's UNet, first run included): once packed, a never-written weight's dense pages are handed
back to the kernel (`weights.release_mapped_pages`) and read again from the file if anything
reads the weight later, so memory stays at one copy. Weights in ordinary memory (a hub model
loaded before it was in the local cache, `weight_cache_gb` 0) are their only copy; those
layers stay in eager mode.

A packed copy is valid for one weight version: a LoRA merge writes the weights it changes in
place, which bumps their version, and their next call packs again (as eager mode would
reorder anyway); those layers then hold both copies.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch

from kakumei.engine.weights import is_mapped, release_mapped_pages

log = logging.getLogger(__name__)

_PACKED = "_kakumei_packed"


def packing_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and ops is not None
        and all(hasattr(ops, name) for name in (
            "_reorder_convolution_weight", "_convolution_pointwise", "_reorder_linear_weight", "_linear_pointwise"))
    )


def wants_packing(device: torch.device, dtype: torch.dtype) -> bool:
    """bf16 on a CPU: there eager mode computes every conv and linear layer in oneDNN anyway."""
    return device.type == "cpu" and dtype == torch.bfloat16 and packing_available()


def _inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # the packed ops have no autograd formula: only where nothing records a graph
    return (torch.is_inference_mode_enabled() or not torch.is_grad_enabled()) and x.device.type == "cpu" \
        and x.dtype == weight.dtype == torch.bfloat16


_EAGER = "_kakumei_eager"


def _packed(module: torch.nn.Module, key: tuple[Any, ...], pack: Any) -> Any:
    """The packed weight for `key`, or None where this layer runs in eager mode."""
    entry = getattr(module, _PACKED, None)
    if entry is not None and entry[0] == key:
        return entry[1]
    weight = module.weight
    if getattr(module, _EAGER, False) or not is_mapped(weight):
        # ordinary memory (no weight cache behind it): a packed copy would double the
        # weights' memory, since these pages are the only copy
        object.__setattr__(module, _EAGER, True)
        return None
    packed = pack(weight)
    object.__setattr__(module, _PACKED, (key, packed))  # not a buffer: never saved or moved
    if weight._version == 0:  # never written: its pages equal the file's
        release_mapped_pages(weight)
    return packed


def _conv_forward(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if not (_inference(x, weight) and x.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last)):
        return torch.nn.Conv2d.forward(self, x)
    # eager mode computes in channels-last when the weight is (the transformer blocks hand
    # their 1x1 output convolution a contiguous tensor), and so does this
    x = x.contiguous(memory_format=torch.channels_last)
    padding, stride, dilation = list(self.padding), list(self.stride), list(self.dilation)
    key = (weight.data_ptr(), weight._version, tuple(x.shape))
    packed = _packed(self, key, lambda w: torch.ops.mkldnn._reorder_convolution_weight(
        w, padding, stride, dilation, self.groups, list(x.shape)))
    if packed is None:
        return torch.nn.Conv2d.forward(self, x)
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, self.bias, padding, stride, dilation, self.groups, "none", [], "")


def _linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if not (_inference(x, weight) and x.dim() >= 2 and x.is_contiguous()):
        return torch.nn.Linear.forward(self, x)
    rows = x.numel() // x.shape[-1]
    key = (weight.data_ptr(), weight._version, rows)
    packed = _packed(self, key, lambda w: torch.ops.mkldnn._reorder_linear_weight(w, rows))
    if packed is None:
        return torch.nn.Linear.forward(self, x)
    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")


def pack_unet(unet: torch.nn.Module) -> int:
    """Make the plain Conv2d (zero padding, explicit sizes) and Linear layers of `unet` pack
    their weights on first use; returns how many layers will. Subclasses keep their own
    forward (they may do more than the plain layer)."""
    count = 0
    for module in unet.modules():
        if type(module) is torch.nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            module.forward = types.MethodType(_conv_forward, module)
            count += 1
        elif type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_linear_forward, module)
            count += 1
    log.debug("packing %d layers of %s on first use", count, type(unet).__name__)
    return count
