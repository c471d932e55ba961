"""Reference (oracle) of generalized neighborhood attention (GNA): the dense mask from the definition.

NATTEN >= 0.20 semantics (see ``visionattn.ops.neighborhood``); O(tokens^2) memory, for tests and small inputs.
"""
import math
from typing import Optional, Sequence, Tuple

import torch

__all__ = ['gna_axis_mask', 'gna_mask', 'gna_reference']


def gna_axis_mask(
        length: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        is_causal: bool = False,
        device: Optional[torch.device] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """GNA neighbourhood along one axis, from the definition (NATTEN's reference mask).

    A query and a key are neighbours iff they are in the same dilation group (``coord % dilation``) and, in in-group
    coordinates ``c = coord // dilation`` over the group's length ``L_g``:

    * non-causal: the stride group leader is ``min((c_q // s) * s + s // 2, L_g - 1)`` (the centre query of the
      group, the right-hand one when ``s`` is even); the window centre is the leader clamped to
      ``[k // 2, L_g - 1 - (k // 2 + k % 2 - 1)]`` and covers ``k // 2`` keys left of the centre and
      ``k // 2 + k % 2 - 1`` right of it, so every query sees exactly ``k`` keys (windows move inward at borders).
    * causal: the leader is the last query of the stride group, ``min((c_q // s) * s + s - 1, L_g - 1)``; keys
      ``c_k`` with ``leader - k < c_k <= c_q``.

    Returns:
        ``mask`` bool ``[L, L]`` (query, key) and ``rel`` long ``[L, L]``, the relative position bias index
        ``(key - query) / dilation + kernel_size - 1`` (clamped into ``[0, 2k - 2]`` where ``mask`` is False).
    """
    pos = torch.arange(length, device=device)
    group = pos % dilation
    c = pos // dilation
    group_len = (length - group + dilation - 1) // dilation  # number of coords in each position's dilation group
    cq, ck = c[:, None], c[None, :]
    lq = group_len[:, None]
    same_group = group[:, None] == group[None, :]
    if is_causal:
        leader = torch.minimum((cq // stride) * stride + stride - 1, lq - 1)
        in_window = (ck <= cq) & (ck > leader - kernel_size)
    else:
        left = kernel_size // 2
        right = kernel_size // 2 + kernel_size % 2 - 1
        leader = torch.minimum((cq // stride) * stride + stride // 2, lq - 1)
        centre = torch.maximum(torch.minimum(leader, lq - 1 - right), torch.full_like(leader, left))
        in_window = (ck >= centre - left) & (ck <= centre + right)
    mask = same_group & in_window
    rel = ((pos[None, :] - pos[:, None]) // dilation + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    return mask, rel


def gna_mask(
        shape: Sequence[int],
        kernel_size: Sequence[int],
        stride: Sequence[int],
        dilation: Sequence[int],
        is_causal: Sequence[bool],
        device: Optional[torch.device] = None,
) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """Dense GNA mask over row-major flattened tokens: bool ``[N, N]`` and per-axis rpb indices, each ``[N, N]``."""
    n = len(shape)
    mask = None
    rels = []
    for i in range(n):
        m, r = gna_axis_mask(shape[i], kernel_size[i], stride[i], dilation[i], is_causal[i], device=device)
        # broadcast axis i's [L_i, L_i] to [..., L_i, ..., L_i, ...] over (query coords, key coords)
        view = [1] * (2 * n)
        view[i] = shape[i]
        view[n + i] = shape[i]
        m = m.view(view)
        rels.append(r.view(view))
        mask = m if mask is None else mask & m
    full = list(shape) + list(shape)
    num = math.prod(shape)
    mask = mask.expand(full).reshape(num, num)
    rels = tuple(r.expand(full).reshape(num, num) for r in rels)
    return mask, rels


def gna_reference(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        dilation: Sequence[int],
        is_causal: Sequence[bool],
        rpb: Optional[torch.Tensor] = None,
        scale: Optional[float] = None,
        additional_keys: Optional[torch.Tensor] = None,
        additional_values: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """GNA of any rank by dense masked attention; arguments already normalized to per-axis tuples.

    Layout heads-last: ``query``/``key`` ``[B, *spatial, heads, D]``, ``value`` ``[B, *spatial, heads, Dv]``.
    ``rpb`` ``[heads, 2k_0 - 1, ..., 2k_{n-1} - 1]`` is added to the scaled logits. Additional keys/values
    ``[B, n_extra, heads, D or Dv]`` are attended by every query in the same softmax, without bias.
    Computes in the input dtype.
    """
    b, heads, dim = query.shape[0], query.shape[-2], query.shape[-1]
    shape = tuple(query.shape[1:-2])
    num = math.prod(shape)
    scale = dim ** -0.5 if scale is None else scale
    q = query.reshape(b, num, heads, dim)
    k = key.reshape(b, num, heads, dim)
    v = value.reshape(b, num, heads, value.shape[-1])
    mask, rels = gna_mask(shape, kernel_size, stride, dilation, is_causal, device=query.device)
    logits = torch.einsum('bqhd,bkhd->bhqk', q, k) * scale  # [B, H, N, N]
    if rpb is not None:
        logits = logits + rpb[(slice(None),) + rels]  # [H, N, N]
    logits = logits.masked_fill(~mask, float('-inf'))
    if additional_keys is not None:
        extra = torch.einsum('bqhd,bkhd->bhqk', q, additional_keys) * scale
        logits = torch.cat([logits, extra], dim=-1)
        v = torch.cat([v, additional_values], dim=1)
    attn = logits.softmax(dim=-1)
    out = torch.einsum('bhqk,bkhd->bqhd', attn, v)
    return out.reshape(query.shape[:-1] + (value.shape[-1],))
