"""HiLo attention (LITv2): high-frequency window attention and low-frequency pooled global attention, head-split.

Paper: `Fast Vision Transformers with HiLo Attention` - https://arxiv.org/abs/2205.13213 (Pan, Cai, Zhuang;
NeurIPS 2022). Official code: https://github.com/ziplab/LITv2 (Apache-2.0), ``HiLo`` in
``classification/models/attentions.py`` and, with the zero padding used here, in the detection/segmentation backbones
(``detection/mmdet/models/backbones/litv2.py``).

The ``num_heads`` heads are split by ``alpha``: ``l_heads = int(num_heads * alpha)`` Lo-Fi heads and the rest Hi-Fi
heads (``window_size == 1`` makes every head Lo-Fi, i.e. plain global attention).

- Hi-Fi: softmax attention inside non-overlapping ``s x s`` windows (``h_qkv`` channels ``[q | k | v]``, head-major),
  then its own output projection ``h_proj``.
- Lo-Fi: queries ``l_q`` at every position attend to keys/values ``l_kv`` (channels ``[k | v]``) of the input average
  pooled over ``s x s`` windows, then its own projection ``l_proj``.
- Output: ``concat([hifi, lofi], channel)`` - Hi-Fi channels first; there is no joint projection.

Maps whose sides are not multiples of ``s`` are zero-padded bottom/right before both branches and the outputs cropped
(no mask: the padded zeros act as keys/values, exactly as in the official detection/segmentation code).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .helpers import head_dim_of

__all__ = ['HiLo']


class HiLo(nn.Module):
    """HiLo attention over an NHWC map ``[B, H, W, C]`` (any ``H, W``); returns ``[B, H, W, C]``.

    Parameter names are the official ones (``h_qkv``, ``h_proj``, ``l_q``, ``l_kv``, ``l_proj``), so official
    weights load unchanged.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            window_size: int = 2,
            alpha: float = 0.9,
    ):
        """
        Args:
            dim: Channels.
            num_heads: Heads in total (Hi-Fi plus Lo-Fi).
            qkv_bias: Bias of the q/k/v projections.
            qk_scale: Logit scale (default ``head_dim ** -0.5``).
            window_size: Hi-Fi window and Lo-Fi pooling size ``s``; 1 gives plain global attention.
            alpha: Fraction of the heads that are Lo-Fi (rounded down).
        """
        super().__init__()
        self.head_dim = head_dim_of(dim, num_heads)
        if window_size < 1:
            raise ValueError(f'window_size must be >= 1, got {window_size}')
        if not 0. <= alpha <= 1.:
            raise ValueError(f'alpha must lie in [0, 1], got {alpha}')
        self.dim = dim
        self.ws = window_size
        self.l_heads = num_heads if window_size == 1 else int(num_heads * alpha)
        self.h_heads = num_heads - self.l_heads
        self.l_dim = self.l_heads * self.head_dim
        self.h_dim = self.h_heads * self.head_dim
        self.scale = qk_scale or self.head_dim ** -0.5
        if self.l_heads > 0:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, self.l_dim * 2, bias=qkv_bias)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim)
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, self.h_dim * 3, bias=qkv_bias)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, window_size={self.ws}, h_heads={self.h_heads}, l_heads={self.l_heads}'

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention of the Hi-Fi heads; ``x`` is ``[B, H, W, C]`` with ``H, W`` multiples of the window."""
        B, H, W, _ = x.shape
        s, nh, hd = self.ws, self.h_heads, self.head_dim
        hg, wg = H // s, W // s
        qkv = self.h_qkv(x).reshape(B, hg, s, wg, s, 3, nh, hd)
        # -> [3, B * windows, heads, s * s, head_dim]
        qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B * hg * wg, nh, s * s, hd)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        out = out.reshape(B, hg, wg, nh, s, s, hd).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, self.h_dim)
        return self.h_proj(out)

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of the Lo-Fi heads to the window-pooled map; ``x`` is ``[B, H, W, C]``."""
        B, H, W, C = x.shape
        nh, hd = self.l_heads, self.head_dim
        q = self.l_q(x).reshape(B, H * W, nh, hd).transpose(1, 2)
        if self.ws > 1:
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), self.ws, self.ws).flatten(2).transpose(1, 2)
        else:
            x = x.reshape(B, H * W, C)
        kv = self.l_kv(x).reshape(B, -1, 2, nh, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=self.scale)
        return self.l_proj(out.transpose(1, 2).reshape(B, H, W, self.l_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, _ = x.shape
        s = self.ws
        # zero-pad bottom/right to multiples of the window (official det/seg code); a no-op for s == 1
        x = F.pad(x, (0, 0, 0, (s - W % s) % s, 0, (s - H % s) % s))
        if self.h_heads == 0:
            out = self.lofi(x)
        elif self.l_heads == 0:
            out = self.hifi(x)
        else:
            out = torch.cat([self.hifi(x), self.lofi(x)], dim=-1)
        return out[:, :H, :W]
