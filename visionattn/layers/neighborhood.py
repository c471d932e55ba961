"""Neighborhood attention modules over the GNA op (``visionattn.ops.neighborhood``).

``NeighborhoodAttention1d/2d/3d`` take channels-last input ``[B, *spatial, C]`` like NATTEN's modules, and add what
NATTEN >= 0.20 dropped: an optional relative positional bias (``rpb``, ``[heads, 2k-1, ...]``, the layout of NAT/DiNAT
checkpoints), attention dropout and the pre-0.17 option of zero-padding inputs smaller than ``kernel_size * dilation``.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import register_notrace_module, trunc_normal_

from visionattn.ops._args import gna_axes
from visionattn.ops._dispatch import is_exporting
from visionattn.ops.blocked.neighborhood import gna_blocked
from visionattn.ops.neighborhood import neighborhood_attention
from visionattn.ops.reference.neighborhood import gna_gather

from .helpers import head_dim_of

__all__ = ['NeighborhoodAttention1d', 'NeighborhoodAttention2d', 'NeighborhoodAttention3d']


SMALL_INPUT_MODES = ('error', 'pad', 'clamp')


class _NeighborhoodAttentionNd(nn.Module):
    na_dim: int = 0

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: Union[int, Sequence[int]],
            stride: Union[int, Sequence[int]] = 1,
            dilation: Union[int, Sequence[int]] = 1,
            is_causal: Union[bool, Sequence[bool]] = False,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            rel_pos_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            small_input: str = 'error',
            backend: str = 'auto',
    ):
        """
        Args:
            dim: channels.
            num_heads: attention heads (``dim`` must be divisible by it).
            kernel_size: window per axis.
            stride: GNA stride per axis.
            dilation: dilation per axis.
            is_causal: causal masking per axis.
            qkv_bias: bias of the qkv projection.
            qk_scale: logit scale (default ``head_dim ** -0.5``).
            rel_pos_bias: learn a relative positional bias ``rpb`` of shape ``[heads, 2k-1, ...]``.
            attn_drop: dropout on the attention probabilities (training only).
            proj_drop: dropout after the output projection.
            small_input: inputs smaller than ``kernel_size * dilation`` on an axis: ``'error'`` raises a ValueError
                naming the axis and sizes; ``'pad'`` zero-pads the end of the axis to ``kernel_size * dilation`` and
                crops the output, as NATTEN <= 0.15 modules (and the official NAT/DiNAT downstream models) did;
                ``'clamp'`` lowers that axis' dilation to ``max(1, size // kernel_size)``, padding maps still smaller
                than the kernel.
            backend: op backend (``'auto'``, ``'blocked'``, ``'triton'``, ``'reference'``).
        """
        super().__init__()
        n = self.na_dim
        if small_input not in SMALL_INPUT_MODES:
            raise ValueError(f'small_input must be one of {SMALL_INPUT_MODES}, got {small_input!r}')
        self.num_heads = num_heads
        self.head_dim = head_dim_of(dim, num_heads)
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size, self.stride, self.dilation, self.is_causal = gna_axes(
            n, kernel_size, stride, dilation, is_causal)
        for k, s in zip(self.kernel_size, self.stride):
            if not 1 <= s <= k:
                raise ValueError(
                    f'stride must be an int with 1 <= stride <= kernel_size per axis, got stride {self.stride} for '
                    f'kernel_size {self.kernel_size}')
        self.small_input = small_input
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, *[2 * k - 1 for k in self.kernel_size]))
            trunc_normal_(self.rpb, std=.02, mean=0., a=-2., b=2.)
        else:
            self.register_parameter('rpb', None)
        self.attn_drop_p = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
            self,
            x: torch.Tensor,
            additional_keys: Optional[torch.Tensor] = None,
            additional_values: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``x``: ``[B, *spatial, C]``; optional extra keys/values ``[B, n, heads, head_dim]``."""
        n = self.na_dim
        if x.dim() != n + 2:
            raise ValueError(f'{type(self).__name__} expects input [B, {n} spatial axes, C], got {tuple(x.shape)}')
        if self.small_input != 'error' and is_exporting():
            return self._forward_export(x, additional_keys, additional_values)
        shape = tuple(x.shape[1:-1])
        dilation = self.dilation
        if self.small_input == 'clamp':
            dilation = tuple(max(1, min(d, s // k)) for d, k, s in zip(self.dilation, self.kernel_size, shape))
        if self.small_input != 'error':
            pad = []
            for i in reversed(range(n)):
                pad += [0, max(0, self.kernel_size[i] * dilation[i] - shape[i])]
            if any(pad):
                x = nn.functional.pad(x, [0, 0] + pad)
        c = x.shape[-1]
        q, k, v = self.qkv(x).reshape(*x.shape[:-1], 3, self.num_heads, self.head_dim).unbind(-3)
        if self.training and self.attn_drop_p > 0:
            x = gna_blocked(
                q, k, v, self.kernel_size, self.stride, dilation, self.is_causal, self.rpb, self.scale,
                additional_keys, additional_values, dropout_p=self.attn_drop_p)
        else:
            x = neighborhood_attention(
                q, k, v, self.kernel_size, self.stride, dilation, self.is_causal, self.rpb, self.scale,
                additional_keys, additional_values, backend=self.backend)
        x = x.reshape(*x.shape[:-2], c)
        if tuple(x.shape[1:-1]) != shape:
            x = x[(slice(None),) + tuple(slice(0, s) for s in shape)]
        return self.proj_drop(self.proj(x))

    def _forward_export(
            self,
            x: torch.Tensor,
            additional_keys: Optional[torch.Tensor],
            additional_values: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """``forward`` for ``small_input`` 'pad' or 'clamp' without a branch on the input size (a graph that runs at
        every size): one zero token past the end of each axis stands for all the padding (padded tokens all project
        to the qkv bias), and the padded length (and the clamped dilation) enter the window indices as tensors."""
        n = self.na_dim
        shape = x.shape[1:-1]
        extent, dilation = [], []
        for i in range(n):
            size = torch.full((), shape[i], dtype=torch.long, device=x.device)
            k, d = self.kernel_size[i], self.dilation[i]
            if self.small_input == 'clamp':
                d = (size // k).clamp(1, d)
            dilation.append(d)
            extent.append(torch.clamp_min(size, k * d) if isinstance(d, int) else torch.maximum(size, k * d))
        x = nn.functional.pad(x, [0, 0] + [0, 1] * n)
        c = x.shape[-1]
        q, k, v = self.qkv(x).reshape(*x.shape[:-1], 3, self.num_heads, self.head_dim).unbind(-3)
        for i in range(n):  # the queries: the real tokens (a gather, no slice whose layout depends on the size)
            q = q.index_select(1 + i, torch.arange(shape[i], device=x.device))
        x = gna_gather(q, k, v, self.kernel_size, self.stride, dilation, self.is_causal, self.rpb, self.scale,
                       additional_keys, additional_values, extent=extent)
        return self.proj_drop(self.proj(x.reshape(*x.shape[:-2], c)))

    def extra_repr(self) -> str:
        return (f'head_dim={self.head_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, dilation={self.dilation}, is_causal={self.is_causal}, '
                f'rel_pos_bias={self.rpb is not None}, small_input={self.small_input!r}')


@register_notrace_module  # reason: pads/clamps from the input size, which FX cannot trace
class NeighborhoodAttention1d(_NeighborhoodAttentionNd):
    """1-D (generalized) neighborhood attention over ``[B, L, C]``."""
    na_dim = 1


@register_notrace_module  # reason: pads/clamps from the input size, which FX cannot trace
class NeighborhoodAttention2d(_NeighborhoodAttentionNd):
    """2-D (generalized) neighborhood attention over ``[B, H, W, C]`` (NAT/DiNAT)."""
    na_dim = 2


@register_notrace_module  # reason: pads/clamps from the input size, which FX cannot trace
class NeighborhoodAttention3d(_NeighborhoodAttentionNd):
    """3-D (generalized) neighborhood attention over ``[B, T, H, W, C]``."""
    na_dim = 3
