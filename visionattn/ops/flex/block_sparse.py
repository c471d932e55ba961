"""Block-sparse attention through FlexAttention: the block lists become a ``mask_mod`` (and the ``BlockMask``'s
sparsity), their multiplicities and biases one additive ``score_mod`` term per (query block, key block).

The list is a multiset: a key block listed in slots ``j1, j2`` contributes ``exp(s + b_j1) + exp(s + b_j2)``, i.e.
``s + log(exp(b_j1) + exp(b_j2))`` (``log 2`` without bias), the oracle's block bias; so duplicates count exactly
as in the other backends. ``key_mask`` enters the ``mask_mod``; a query with nothing attendable gets a zero output.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .._dispatch import register_backend
from . import _flex, flex_attention_call, flex_priority, flex_unsupported

__all__ = ['block_sparse_flex']

_OP = 'block_sparse_attention'
_BLOCK = 128


def _block_bias(block_index, bias, nk: int, dtype):
    """``[B, Hi, Nq, Nk]``: ``log(sum over slots listing the block of exp(bias))``; -inf for unlisted blocks."""
    onehot = F.one_hot(block_index.long(), nk).to(torch.bool)  # [B, Hi, Nq, topk, Nk]
    if bias is None:
        return onehot.sum(dim=3).to(dtype).log()
    slot = bias.to(dtype)[..., None]
    return torch.where(onehot, slot, torch.full_like(slot, float('-inf'))).logsumexp(dim=3)


def block_sparse_flex(query, key, value, block_index, scale, bias=None, key_mask=None) -> torch.Tensor:
    """Block-sparse attention (the public layout of ``block_sparse_attention``) through ``flex_attention``."""
    B, Nq, Tq, H, D = query.shape
    _, Nk, Tk, _, Dv = value.shape
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    bb = _block_bias(block_index, bias, Nk, acc).expand(B, H, Nq, Nk)
    listed = torch.isfinite(bb)
    km = None if key_mask is None else key_mask.reshape(B, Nk * Tk)

    def mask_mod(b, h, q_idx, kv_idx):
        ok = listed[b, h, q_idx // Tq, kv_idx // Tk]
        return ok & km[b, kv_idx] if km is not None else ok

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bb[b, h, q_idx // Tq, kv_idx // Tk].to(score.dtype)

    block_mask = _flex()[1](mask_mod, B, H, Nq * Tq, Nk * Tk, device=str(query.device), BLOCK_SIZE=_BLOCK)
    q = query.reshape(B, Nq * Tq, H, D).transpose(1, 2)
    k = key.reshape(B, Nk * Tk, H, D).transpose(1, 2)
    v = value.reshape(B, Nk * Tk, H, Dv).transpose(1, 2)
    out = flex_attention_call(q, k, v, score_mod, block_mask, float(scale))
    # rows with nothing attendable: flex leaves them at zero (lse -inf); make it explicit
    block_ok = listed if key_mask is None else listed & key_mask.any(dim=-1)[:, None, None, :]
    empty = ~block_ok.any(dim=-1)  # [B, H, Nq]
    empty = empty[:, :, :, None, None].expand(B, H, Nq, Tq, 1).reshape(B, H, Nq * Tq, 1)
    out = out.masked_fill(empty, 0.)
    return out.transpose(1, 2).reshape(B, Nq, Tq, H, Dv)


def _unsupported(query, key=None, value=None, bias=None, **kwargs) -> Optional[str]:
    return flex_unsupported(query, key, value, bias)


# below triton (30) on CUDA, above blocked (20); on CPU below every other backend (forward only)
register_backend(_OP, 'flex', block_sparse_flex, priority=2, unsupported=_unsupported, priority_fn=flex_priority(25, 2))
