"""Small helpers shared by the model families."""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module, use_fused_attn

from ..ops._dispatch import is_exporting

__all__ = [
    'check_image_input', 'drop_path_rates', 'head_dim_of', 'QkvAttention', 'CpuBf16SafeConv2d', 'guard_cpu_bf16_convs']


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


class QkvAttention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (timm's ViT ``Attention`` without q/k norms: the same
    parameters and state dict keys), ``scale = head_dim ** -0.5``. ``forward`` is plain attention; the token
    families' attentions subclass it for the parameters and the head split / merge (``split_qkv``, ``project``)."""
    fused_attn: torch.jit.Final[bool]

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim_of(dim, num_heads)
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``[B, N, C]`` to per-head ``q, k, v`` ``[B, heads, N, head_dim]``."""
        B, N, _ = x.shape
        return self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head outputs ``[B, heads, N, head_dim]`` merged to ``[B, N, C]``, through ``proj`` and ``proj_drop``."""
        B, _, N, _ = x.shape
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_qkv(x)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0., scale=self.scale)
        else:
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        return self.project(x)


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
