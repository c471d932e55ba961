"""Blocked aggregated attention in pure PyTorch (backend ``blocked`` of ``visionattn.ops.aggregated``).

The ``k * k`` window slots are shifted views of the zero-padded keys and values (no unfold copy of ``k * k`` times the
keys), memory O(N x (k * k + P)); autograd through plain ops. Registered as the custom op
``visionattn::aggregated_blocked`` for ``torch.compile`` and FLOP counting.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .._custom_op import recompute_custom_op
from .._dispatch import use_opaque_ops

__all__ = ['aggregated_attention_blocked', 'aggregated_blocked_backend']


def _local_mask(h: int, w: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """``[H, W, 1, k * k]`` bool, True where the window slot lies outside the image."""
    r = kernel_size // 2
    ones = F.pad(torch.ones(h, w, device=device), (r, r, r, r))
    slots = [ones[i:i + h, j:j + w] for i in range(kernel_size) for j in range(kernel_size)]
    return (torch.stack(slots, dim=-1) == 0).unsqueeze(-2)


def aggregated_attention_blocked(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        pool_key: Optional[torch.Tensor] = None,
        pool_value: Optional[torch.Tensor] = None,
        kernel_size: int = 3,
        local_bias: Optional[torch.Tensor] = None,
        pool_bias: Optional[torch.Tensor] = None,
        local_weights: Optional[torch.Tensor] = None,
        scale: float = 1.,
        dropout_p: float = 0.,
) -> torch.Tensor:
    """Aggregated attention with window slots as shifted views of the zero-padded keys/values (see module doc)."""
    b, h, w, heads, _ = query.shape
    r = kernel_size // 2
    pad = (0, 0, 0, 0, r, r, r, r)
    kp, vp = F.pad(key, pad), F.pad(value, pad)
    offsets = [(i, j) for i in range(kernel_size) for j in range(kernel_size)]
    q = query * scale if scale != 1. else query
    logits = torch.stack([(q * kp[:, i:i + h, j:j + w]).sum(-1) for i, j in offsets], dim=-1)  # [B, H, W, h, kk]
    if local_bias is not None:
        logits = logits + local_bias
    logits = logits.masked_fill(_local_mask(h, w, kernel_size, query.device), float('-inf'))
    n_local = logits.shape[-1]
    if pool_key is not None:
        pool_logits = torch.einsum('bxyhd,bphd->bxyhp', q, pool_key)
        if pool_bias is not None:
            pool_logits = pool_logits + pool_bias
        logits = torch.cat([logits, pool_logits], dim=-1)
    attn = logits.softmax(dim=-1)
    if dropout_p > 0.:
        attn = F.dropout(attn, dropout_p)
    a_local = attn[..., :n_local]
    if local_weights is not None:
        a_local = local_weights + a_local
    out = None
    for s, (i, j) in enumerate(offsets):
        term = a_local[..., s:s + 1] * vp[:, i:i + h, j:j + w]
        out = term if out is None else out + term
    if pool_key is not None:
        out = out + torch.einsum('bxyhp,bphd->bxyhd', attn[..., n_local:], pool_value)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Custom op wrapper of the blocked backend (torch.compile sees one opaque call instead of the window loops)
# ---------------------------------------------------------------------------------------------------------------------

def _aggregated_blocked_eager(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        pool_key: Optional[torch.Tensor],
        pool_value: Optional[torch.Tensor],
        kernel_size: int,
        local_bias: Optional[torch.Tensor],
        pool_bias: Optional[torch.Tensor],
        local_weights: Optional[torch.Tensor],
        scale: float,
) -> torch.Tensor:
    return aggregated_attention_blocked(
        query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale)


def _aggregated_blocked_fake(query, key, value, *args):
    return query.new_empty(query.shape[:-1] + (value.shape[-1],))


# gradients of every tensor input by recomputation (op aggregated_blocked_backward)
_aggregated_blocked_op = recompute_custom_op(
    'visionattn::aggregated_blocked', _aggregated_blocked_eager, _aggregated_blocked_fake)


def aggregated_blocked_backend(query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias,
                               local_weights, scale, dropout_p):
    if use_opaque_ops() and dropout_p == 0.:
        return _aggregated_blocked_op(
            query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale)
    return aggregated_attention_blocked(
        query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale, dropout_p)

