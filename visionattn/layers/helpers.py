"""Small helpers shared by the model families."""
from typing import List, Optional

import torch
import torch.nn as nn
from timm.layers import register_notrace_function, register_notrace_module

from ..ops._dispatch import is_exporting

__all__ = ['check_image_input', 'drop_path_rates', 'head_dim_of', 'CpuBf16SafeConv2d', 'guard_cpu_bf16_convs']


@register_notrace_function  # reason: raises on shape values, which FX cannot trace
def check_image_input(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Check that ``x`` is an image batch ``[B, in_chans, H, W]``; raise a ValueError naming the problem if not."""
    if x.ndim != 4:
        raise ValueError(
            f'Expected an image batch of shape [B, {in_chans}, H, W], got a {x.ndim}-D tensor {list(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'Expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)}); '
            f'create the model with in_chans={x.shape[1]} to change it')
    return x


def drop_path_rates(drop_path_rate: float, depth: int) -> List[float]:
    """Linearly increasing stochastic depth rates over ``depth`` blocks (the DeiT/timm rule)."""
    return [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0] * depth


def head_dim_of(dim: int, num_heads: int) -> int:
    """Channels per head, ``dim // num_heads``; a ValueError unless ``num_heads`` divides ``dim``."""
    if dim % num_heads:
        raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
    return dim // num_heads


def _cpu_bf16(x: torch.Tensor) -> bool:
    if x.device.type != 'cpu':
        return False
    return x.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.bfloat16)


@register_notrace_module  # reason: the fallback depends on the output width, a shape value
class CpuBf16SafeConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) that computes a strided bfloat16 convolution on CPU in float32
    when its output is one column wide, and returns bfloat16.

    torch 2.14's oneDNN bfloat16 convolution on CPU (seen on an AMX / AVX512-BF16 Xeon) reads uninitialised memory
    when the stride is above 1 and the output width is 1 (any height above 1, any batch): the output holds garbage,
    often non-finite. Hierarchical backbones meet it in their last downsampling on inputs 32 to 63 pixels wide. The
    fallback costs nothing that matters: such maps are one column wide."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if (isinstance(self.padding, str) or max(self.stride) == 1 or not _cpu_bf16(x) or is_exporting()
                or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            return super()._conv_forward(x, weight, bias)
        pad, dil, k, s = self.padding[1], self.dilation[1], self.kernel_size[1], self.stride[1]
        if (x.shape[-1] + 2 * pad - dil * (k - 1) - 1) // s + 1 != 1:
            return super()._conv_forward(x, weight, bias)
        with torch.autocast('cpu', enabled=False):
            y = super()._conv_forward(x.float(), weight.float(), None if bias is None else bias.float())
        return y.to(torch.bfloat16)


def guard_cpu_bf16_convs(model: nn.Module) -> nn.Module:
    """Make every strided ``nn.Conv2d`` of ``model`` a :class:`CpuBf16SafeConv2d` (in place: parameters, state dict
    keys and float32 results unchanged) and return ``model``."""
    for m in model.modules():
        if type(m) is nn.Conv2d and max(m.stride) > 1:
            m.__class__ = CpuBf16SafeConv2d
    return model
