"""Rank-augmented linear attention (RALA, arXiv 2411.07635) and the 2-D rotary position tables it uses.

Layout: ``[B, heads, L, head_dim]`` with ``L = H * W`` row-major, the layout of ``F.scaled_dot_product_attention``
(the RAVLT model is channels-first, so this is what its 1x1 ``qkvo`` projection gives without a copy).

RALA (the official ``GateLinearAttentionNoSilu`` core, steps in the official order; qhfan/RALA ``RALA.py``):

1. kernel ``phi(x) = elu(x) + 1`` on q and k;
2. KV-buffer rank augmentation: ``alpha = softmax_L(scale * mean_L(q) k^T)``, every key token reweighted by its
   ``alpha`` (the official ``k * alpha * L`` followed by the ``L ** -0.5`` factors on k and v; the ``L`` factors cancel
   and are left out here);
3. 2-D RoPE on q and on the reweighted k (numerator only);
4. ``out_i = (rope(q_i) sum_j rope(k'_j) v_j^T) / (q_i . sum_j k'_j + eps)``: the normaliser uses the RoPE-free q and
   the reweighted k, as the official code (the paper's eq. 6 leaves the normaliser out; issue #3).

Precision: half and bfloat16 inputs are computed in float32 (autocast off inside) and the result cast back. Under
fp16 autocast the official code runs the key-reweighting logits ``scale * mean(q) @ k^T``, the normaliser
``q @ mean(k)^T``, ``k^T v`` and ``q_rope @ kv`` as fp16 matmuls. The normaliser sums ``d`` products of positive
features: with q and k around 40 over 64 channels (ordinary fp16 values) it exceeds 65504, becomes inf, ``z = 0``,
and ``inf * 0`` gives NaN (tests/models/test_ravlt.py reproduces it). The op is ``O(L d^2)``, so float32 costs little
next to the convolutions.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

__all__ = ['rope_2d_tables', 'apply_rope_2d', 'rank_augmented_linear_attention', 'rope_softmax_attention']

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_TABLE_CACHE: Dict[tuple, Tuple[Tensor, Tensor]] = {}
_TABLE_CACHE_SIZE = 64


def _rope_tables(h: int, w: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> Tuple[Tensor, Tensor]:
    # the official ``RoPE`` buffer: computed in float32 at construction, cast with the model (``.double()``)
    angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 4, dtype=torch.float32, device=device))
    angle = angle.repeat_interleave(2).to(dtype)  # [d / 2]
    ang_h = torch.arange(h, device=device).to(dtype)[:, None] * angle  # [h, d/2]
    ang_w = torch.arange(w, device=device).to(dtype)[:, None] * angle  # [w, d/2]
    # first d/2 channels encode the row, the last d/2 the column
    ang = torch.cat([ang_h[:, None, :].expand(h, w, -1), ang_w[None, :, :].expand(h, w, -1)], dim=-1)
    ang = ang.reshape(h * w, head_dim)
    return torch.sin(ang), torch.cos(ang)


@register_notrace_function  # reason: the table size is a Python function of the input shape (and cached)
def rope_2d_tables(
        h: int,
        w: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
) -> Tuple[Tensor, Tensor]:
    """RAVLT's 2-D RoPE tables ``(sin, cos)``, each ``[h * w, head_dim]``, for an ``h x w`` map.

    ``angle = 1 / 10000 ** linspace(0, 1, head_dim // 4)``, each repeated twice; channels ``[0, d/2)`` rotate by
    ``row * angle``, channels ``[d/2, d)`` by ``col * angle``. Equal to the official ``RoPE((h, w))``. Tables are
    cached per ``(h, w, head_dim, dtype, device)`` (not while ``torch.compile`` traces: there they are constants).
    Half and bfloat16 requests get float32 tables (the official buffer stays float32 under autocast).
    """
    if head_dim % 4:
        raise ValueError(f'2-D RoPE needs a head_dim divisible by 4, got {head_dim}')
    if dtype in _LOW_PRECISION:
        dtype = torch.float32
    device = torch.device('cpu') if device is None else torch.device(device)
    if torch.compiler.is_compiling():  # symbolic sizes under torch.export: int() would bake them in
        return _rope_tables(h, w, head_dim, dtype, device)
    h, w = int(h), int(w)
    key = (h, w, head_dim, dtype, device)
    tables = _TABLE_CACHE.get(key)
    if tables is None:
        if len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
            _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            tables = _rope_tables(h, w, head_dim, dtype, device)
        _TABLE_CACHE[key] = tables
    return tables


def apply_rope_2d(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """``x * cos + rotate_every_two(x) * sin`` (the official ``theta_shift``); ``x`` is ``[..., L, d]``."""
    x2 = x.unflatten(-1, (-1, 2))
    rot = torch.stack((-x2[..., 1], x2[..., 0]), dim=-1).flatten(-2)
    return x * cos + rot * sin


def _rala(q: Tensor, k: Tensor, v: Tensor, sin: Tensor, cos: Tensor, scale: float, eps: float) -> Tensor:
    q = F.elu(q) + 1.0
    k = F.elu(k) + 1.0
    alpha = torch.softmax(scale * q.mean(dim=-2, keepdim=True) @ k.transpose(-2, -1), dim=-1)  # [B, n, 1, L]
    k = k * alpha.transpose(-2, -1)  # reweighted keys
    z = 1.0 / (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + eps)  # [B, n, L, 1]
    kv = apply_rope_2d(k, sin, cos).transpose(-2, -1) @ v  # [B, n, d, d]
    return apply_rope_2d(q, sin, cos) @ kv * z


@register_notrace_function  # reason: dtype-dependent precision choice
def rank_augmented_linear_attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        sin: Tensor,
        cos: Tensor,
        scale: Optional[float] = None,
        eps: float = 1e-6,
) -> Tensor:
    """RALA over ``[B, heads, L, d]`` q, k, v (before the ``elu + 1`` kernel) with RoPE tables ``[L, d]``.

    Args:
        q: Queries, before the kernel.
        k: Keys, before the kernel.
        v: Values.
        sin: RoPE sine table (:func:`rope_2d_tables`).
        cos: RoPE cosine table.
        scale: Scale of the query-mean/key logits that reweight the keys (default ``d ** -0.5``).
        eps: Added to the normaliser (the official 1e-6).

    Returns:
        ``[B, heads, L, d]`` in the dtype of ``v``; half/bfloat16 inputs are computed in float32.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out_dtype = v.dtype
    if q.dtype in _LOW_PRECISION or k.dtype in _LOW_PRECISION or v.dtype in _LOW_PRECISION or \
            torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            out = _rala(q.float(), k.float(), v.float(), sin.float(), cos.float(), scale, eps)
        return out.to(out_dtype)
    return _rala(q, k, v, sin.to(q.dtype), cos.to(q.dtype), scale, eps)


@register_notrace_function  # reason: dtype-dependent casts
def rope_softmax_attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        sin: Tensor,
        cos: Tensor,
        scale: Optional[float] = None,
) -> Tensor:
    """Softmax attention with 2-D RoPE on q and k (RAVLT's stage-3/4 attention), ``[B, heads, L, d]``.

    RoPE is applied in float32 for half/bfloat16 inputs (as the official code does through type promotion against its
    float32 tables); the attention itself runs in ``F.scaled_dot_product_attention``, whose kernels accumulate in
    float32, where the official ``softmax(scale * q @ k^T)`` forms fp16 logits that can overflow.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = v.dtype
    if dtype in _LOW_PRECISION or q.dtype in _LOW_PRECISION:
        q = apply_rope_2d(q.float(), sin.float(), cos.float())
        k = apply_rope_2d(k.float(), sin.float(), cos.float())
    else:
        q = apply_rope_2d(q, sin.to(q.dtype), cos.to(q.dtype))
        k = apply_rope_2d(k, sin.to(k.dtype), cos.to(k.dtype))
    return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v, scale=scale)
