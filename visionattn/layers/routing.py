"""Bi-Level Routing Attention module (BiFormer, arXiv 2303.08810, https://github.com/rayleizhu/BiFormer, MIT).

Equals the official legacy module (``ops/bra_legacy.py``: ``kv_downsample_mode='identity'``, ``param_routing=False``,
``diff_routing=False``, ``soft_routing=False``, ``param_attention='qkvo'``) that all released BiFormer checkpoints use.
Official parameter names map as ``qkv.qkv.* -> qkv.*``, ``wo.* -> proj.*``, ``lepe.* -> lepe.*``
(see :func:`bra_checkpoint_filter`).
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor

from ..ops._dispatch import is_exporting
from ..ops.routing import bilevel_routing_attention_with_index

__all__ = ['BiLevelRoutingAttention', 'bra_checkpoint_filter']


@register_notrace_module  # shape-dependent padding: a leaf for FX feature extraction
class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention on NHWC maps: qkv Linear, region routing, block-sparse attention, LePE, output Linear.

    Args:
        dim: input/output channels (also the value dim).
        num_heads: attention heads.
        n_win: regions per side.
        qk_dim: query/key channels (``dim`` if None).
        qk_scale: logit scale (``qk_dim ** -0.5`` if None, the official full-channel scale).
        topk: routed key regions per query region.
        side_dwconv: kernel of the LePE depthwise conv on V (0 disables it).
        qkv_bias: bias of the qkv projection.
        padding: for H or W not divisible by ``n_win``: ``'legacy'`` zero-pads the input before the qkv projection so
            padded tokens (q/k/v = bias) join the descriptors and are attended, exactly as the official ``auto_pad``
            (the released checkpoints); ``'masked'`` pads after projection and excludes padded tokens; ``'none'``
            raises.
        backend: block-sparse backend (``'auto'`` picks the best available).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            n_win: int = 7,
            qk_dim: Optional[int] = None,
            qk_scale: Optional[float] = None,
            topk: int = 4,
            side_dwconv: int = 5,
            qkv_bias: bool = True,
            padding: str = 'legacy',
            backend: str = 'auto',
    ):
        super().__init__()
        qk_dim = qk_dim or dim
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(f'qk_dim {qk_dim} and dim {dim} must be divisible by num_heads {num_heads}')
        if padding not in ('legacy', 'masked', 'none'):
            raise ValueError(f"padding must be 'legacy', 'masked' or 'none', got {padding!r}")
        self.dim = dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale or qk_dim ** -0.5
        self.padding = padding
        self.backend = backend
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(
            dim, dim, kernel_size=side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None
        self.proj = nn.Linear(dim, dim)

    def _lepe(self, v: Tensor) -> Tensor:
        if self.lepe is None:
            return torch.zeros_like(v)
        return self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, H, W, dim] -> [B, H, W, dim]."""
        B, H, W, _ = x.shape
        n = self.n_win  # padded sides as n * ceil(H / n): the same values, and divisibility an exporter can prove
        pad_b, pad_r = (H + n - 1) // n * n - H, (W + n - 1) // n * n - W
        # exporting: always pad (by zero where divisible), so that no size is baked into the graph
        legacy_pad = self.padding == 'legacy' and (is_exporting() or pad_b > 0 or pad_r > 0)
        if legacy_pad:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        out, _ = bilevel_routing_attention_with_index(
            q, k, v,
            num_heads=self.num_heads,
            n_win=self.n_win,
            topk=self.topk,
            scale=self.scale,
            padding='masked' if self.padding == 'masked' else 'none',
            backend=self.backend,
        )
        out = self.proj(out + self._lepe(v))
        if legacy_pad and is_exporting():
            # crop by gathering rows and columns: a slice's contiguity would be decided at the example size and
            # asserted at run time (so that other sizes fail), a gather has none to decide
            out = out.index_select(1, torch.arange(H, device=out.device))
            out = out.index_select(2, torch.arange(W, device=out.device))
        elif legacy_pad:
            out = out[:, :H, :W].contiguous()
        return out

    def extra_repr(self) -> str:
        return (f'n_win={self.n_win}, topk={self.topk}, num_heads={self.num_heads}, scale={self.scale:.4g}, '
                f'padding={self.padding!r}, backend={self.backend!r}')


def bra_checkpoint_filter(state_dict: Dict[str, Tensor], prefix: str = '') -> Dict[str, Tensor]:
    """Rename official legacy BRA keys under ``prefix`` (``qkv.qkv.*``, ``wo.*``) to this module's names."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if rest.startswith('qkv.qkv.'):
                rest = 'qkv.' + rest[len('qkv.qkv.'):]
            elif rest.startswith('wo.'):
                rest = 'proj.' + rest[len('wo.'):]
            key = prefix + rest
        out[key] = value
    return out
