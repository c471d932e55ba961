"""RALA: rank-augmented linear attention (RAVLT, arXiv 2411.07635) as one channels-first layer.

The same parameters serve the linear attention (``attn_type='linear'``, the official ``GateLinearAttentionNoSilu``)
and the softmax attention RAVLT uses in its last two stages (``'softmax'``, the official ``VanillaSelfAttention``):

* ``qkvo = Conv1x1(C -> 4C)``, channels ``[q | k | v | o]``, head-major inside each;
* ``lepe = DWConv5x5(v)`` (locally enhanced positional encoding), added to the attention output;
* the attention (``visionattn.ops.rala``), both with 2-D RoPE on q and k;
* output-feature rank augmentation: ``proj((attn + lepe) * o)``, ``o`` a plain linear projection of the input.
"""
from typing import Optional, Tuple

import torch.nn as nn
from torch import Tensor

from visionattn.ops.rala import rank_augmented_linear_attention, rope_2d_tables, rope_softmax_attention

__all__ = ['RALA']

_ATTN_TYPES = ('linear', 'softmax')


class RALA(nn.Module):
    """Rank-augmented (linear or softmax) attention over a ``[B, C, H, W]`` map.

    Args:
        dim: Channels.
        num_heads: Heads; ``dim / num_heads`` must be divisible by 4 (2-D RoPE).
        attn_type: ``'linear'`` (RALA) or ``'softmax'``.
        lepe_kernel: Kernel of the depthwise LePE convolution on v.
        eps: Linear attention normaliser epsilon.
    """

    def __init__(self, dim: int, num_heads: int, attn_type: str = 'linear', lepe_kernel: int = 5, eps: float = 1e-6):
        super().__init__()
        if attn_type not in _ATTN_TYPES:
            raise ValueError(f'attn_type must be one of {_ATTN_TYPES}, got {attn_type!r}')
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        if (dim // num_heads) % 4:
            raise ValueError(f'head_dim {dim // num_heads} (dim {dim} / {num_heads} heads) must be divisible by 4')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_type = attn_type
        self.eps = eps
        self.qkvo = nn.Conv2d(dim, dim * 4, 1)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, 1, lepe_kernel // 2, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, attn_type={self.attn_type!r}'

    def forward(self, x: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """``x`` ``[B, C, H, W]``; ``rope`` the ``(sin, cos)`` tables of ``rope_2d_tables(H, W, head_dim)`` (computed
        and cached here when not given)."""
        B, C, H, W = x.shape
        if rope is None:
            rope = rope_2d_tables(H, W, self.head_dim, x.dtype, x.device)
        sin, cos = rope
        qkvo = self.qkvo(x)
        o = qkvo[:, 3 * C:]
        lepe = self.lepe(qkvo[:, 2 * C:3 * C])
        # [B, 3, n, d, L] -> q, k, v as [B, n, L, d] views (no copy)
        q, k, v = qkvo[:, :3 * C].reshape(B, 3, self.num_heads, self.head_dim, H * W).transpose(-2, -1).unbind(1)
        if self.attn_type == 'linear':
            out = rank_augmented_linear_attention(q, k, v, sin, cos, scale=self.scale, eps=self.eps)
        else:
            out = rope_softmax_attention(q, k, v, sin, cos, scale=self.scale)
        out = out.transpose(-2, -1).reshape(B, C, H, W).to(lepe.dtype)
        return self.proj((out + lepe) * o)

