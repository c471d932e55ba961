"""Bi-level routing attention (BiFormer, arXiv 2303.08810): region routing + block-sparse token attention.

The 2-D map is split into ``n_win x n_win`` regions; each region's query and key descriptors are the means of its
queries and keys; every query region keeps the ``topk`` key regions with the largest (detached, scaled) descriptor
products; then each query attends to all tokens of its routed regions (``visionattn.ops.block_sparse``). As in the
official code the scale is ``qk_dim ** -0.5`` over the full query/key channel dim (not per head), and routing and
attention share it.

Padding when H or W is not a multiple of ``n_win`` (regions are ``ceil(H / n_win) x ceil(W / n_win)`` tokens):

* ``'masked'``: q/k/v are zero-padded after projection, padded tokens are left out of the region descriptors and
  excluded as keys, regions made only of padding are never routed to; the result is cropped. Correct for any size.
* ``'none'``: H and W must be multiples of ``n_win`` (raises otherwise). The legacy behaviour of the released BiFormer
  checkpoints (zero-pad the input *before* the qkv projection, padded tokens attended) belongs to the module
  (``visionattn.layers.BiLevelRoutingAttention(padding='legacy')``), which pads and then calls this with ``'none'``.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

from ._dispatch import is_exporting
from .block_sparse import block_sparse_attention

__all__ = [
    'bilevel_routing_attention', 'bilevel_routing_attention_with_index', 'region_partition', 'region_reverse',
    'topk_routing',
]


def region_partition(x: Tensor, n_win: int) -> Tensor:
    """[B, H, W, C] with H, W multiples of ``n_win`` -> [B, n_win * n_win, H/n_win * W/n_win, C] (regions row-major)."""
    B, H, W, C = x.shape
    h, w = H // n_win, W // n_win
    return x.reshape(B, n_win, h, n_win, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, n_win * n_win, h * w, C)


def region_reverse(x: Tensor, n_win: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`region_partition`: [B, n_win * n_win, h * w, C] -> [B, H, W, C]."""
    B, C = x.shape[0], x.shape[-1]
    h, w = H // n_win, W // n_win
    return x.reshape(B, n_win, n_win, h, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)


def topk_routing(q_region: Tensor, k_region: Tensor, topk: int, scale: float, valid: Optional[Tensor] = None) -> Tensor:
    """Indices [B, R, topk] of the ``topk`` key regions with the largest ``(q_r * scale) @ k_r^T`` (on detached inputs).

    ``valid`` (bool [B, R]) marks regions that hold at least one real token; the others are never chosen first.
    """
    logits = (q_region.detach() * scale) @ k_region.detach().transpose(-2, -1)  # [B, R, R]
    if valid is not None:
        logits = logits.masked_fill(~valid[:, None, :], float('-inf'))
    return torch.topk(logits, k=topk, dim=-1).indices


@register_notrace_function
def bilevel_routing_attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        num_heads: int,
        n_win: int,
        topk: int,
        scale: Optional[float] = None,
        padding: str = 'masked',
        backend: str = 'auto',
        return_index: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Bi-level routing attention on channels-last maps (heads packed in the channels).

    Args:
        q: ``[B, H, W, qk_dim]``.
        k: ``[B, H, W, qk_dim]``.
        v: ``[B, H, W, dim]``.
        num_heads: heads; ``qk_dim`` and ``dim`` must be divisible by it.
        n_win: regions per side (``n_win ** 2`` regions).
        topk: key regions per query region.
        scale: defaults to ``qk_dim ** -0.5`` (the official BiFormer scale, full channel dim).
        padding: ``'masked'`` or ``'none'`` (see the module docstring).
        backend: block-sparse backend (``'auto'``, ``'triton'``, ``'blocked'``, ``'gather'``, ``'reference'``).
        return_index: also return the routing indices ``[B, n_win ** 2, topk]``.

    Returns:
        ``[B, H, W, dim]`` (and the routing indices if ``return_index``).
    """
    out, idx = bilevel_routing_attention_with_index(q, k, v, num_heads, n_win, topk, scale, padding, backend)
    if return_index:
        return out, idx
    return out


@register_notrace_function
def bilevel_routing_attention_with_index(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        num_heads: int,
        n_win: int,
        topk: int,
        scale: Optional[float] = None,
        padding: str = 'masked',
        backend: str = 'auto',
) -> Tuple[Tensor, Tensor]:
    """:func:`bilevel_routing_attention` returning ``(output, routing indices)`` (TorchScript-friendly)."""
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f'bilevel_routing_attention expects q, k [B, H, W, qk_dim] and v [B, H, W, dim], '
            f'got {q.shape}, {k.shape}, {v.shape}')
    B, H, W, Cqk = q.shape
    C = v.shape[-1]
    if Cqk % num_heads != 0 or C % num_heads != 0:
        raise ValueError(f'qk_dim {Cqk} and dim {C} must be divisible by num_heads {num_heads}')
    n_regions = n_win * n_win
    if topk < 1 or topk > n_regions:
        raise ValueError(f'topk must lie in [1, n_win ** 2 = {n_regions}], got {topk}')
    if padding != 'masked' and padding != 'none':
        raise ValueError(f"padding must be 'masked' or 'none', got '{padding}'")
    scale_: float = Cqk ** -0.5 if scale is None else scale
    # padded sides as n_win * ceil(H / n_win): the same values, in a form whose divisibility an exporter can prove
    pad_b, pad_r = (H + n_win - 1) // n_win * n_win - H, (W + n_win - 1) // n_win * n_win - W
    exporting = is_exporting()
    if exporting:  # no branch on the size in the graph: 'none' (the caller padded) never pads, 'masked' always does
        padded = padding == 'masked'
    else:
        padded = pad_b > 0 or pad_r > 0
    if padded and padding == 'none':
        raise ValueError(f"padding='none' needs H, W divisible by n_win={n_win}, got H={H}, W={W}")
    if padded:
        q = F.pad(q, (0, 0, 0, pad_r, 0, pad_b))
        k = F.pad(k, (0, 0, 0, pad_r, 0, pad_b))
        v = F.pad(v, (0, 0, 0, pad_r, 0, pad_b))
    Hp, Wp = H + pad_b, W + pad_r

    q_reg = region_partition(q, n_win)  # [B, R, T, Cqk]
    k_reg = region_partition(k, n_win)
    v_reg = region_partition(v, n_win)
    key_mask: Optional[Tensor] = None
    valid: Optional[Tensor] = None
    if padded:
        if exporting:  # the same 0 / 1 map by comparisons (a slice assignment would specialize on the padding)
            rows = torch.arange(Hp, device=q.device) < H
            mask = (rows[:, None] & (torch.arange(Wp, device=q.device) < W)).to(q.dtype)[None, :, :, None]
        else:
            mask = torch.zeros((1, Hp, Wp, 1), dtype=q.dtype, device=q.device)
            mask[:, :H, :W] = 1
        mask_reg = region_partition(mask, n_win)  # [1, R, T, 1]
        count = mask_reg.sum(dim=2).clamp(min=1)  # [1, R, 1]
        # padded tokens are zero, so the sum over a region is the sum over its real tokens
        q_r = q_reg.sum(dim=2) / count
        k_r = k_reg.sum(dim=2) / count
        valid = (mask_reg.sum(dim=2)[..., 0] > 0).expand(B, n_regions)
        key_mask = (mask_reg[..., 0] > 0).expand(B, n_regions, mask_reg.shape[2])
    else:
        q_r, k_r = q_reg.mean(dim=2), k_reg.mean(dim=2)
    idx = topk_routing(q_r, k_r, topk, scale_, valid)  # [B, R, topk]

    T = q_reg.shape[2]
    out = block_sparse_attention(
        q_reg.reshape(B, n_regions, T, num_heads, Cqk // num_heads),
        k_reg.reshape(B, n_regions, T, num_heads, Cqk // num_heads),
        v_reg.reshape(B, n_regions, T, num_heads, C // num_heads),
        idx[:, None],
        scale=scale_,
        key_mask=key_mask,
        backend=backend,
        check_index=False,  # topk indices are in range
    )
    out = region_reverse(out.reshape(B, n_regions, T, C), n_win, Hp, Wp)
    if padded and exporting:  # crop by gathers (a slice's no-op case would be decided at the example size)
        out = out.index_select(1, torch.arange(H, device=out.device))
        out = out.index_select(2, torch.arange(W, device=out.device))
    elif padded:
        out = out[:, :H, :W].contiguous()
    return out, idx
