"""Reference (oracle) of block-sparse attention: dense attention over all tokens, the block lists as a logit bias."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['block_sparse_attention_reference', 'key_bias']


def key_bias(key_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """bool mask [B, Nk, Tk] -> additive bias (0 or -inf)."""
    zero = torch.zeros((), dtype=dtype, device=key_mask.device)
    return torch.where(key_mask, zero, torch.full_like(zero, float('-inf')))


def block_sparse_attention_reference(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        block_index: Tensor,
        scale: float,
        bias: Optional[Tensor] = None,
        key_mask: Optional[Tensor] = None,
) -> Tensor:
    """The oracle: dense attention of every query over every key, with the index lists turned into a logit bias.

    The bias of query block ``n`` towards key block ``m`` is ``log(sum_j [idx[n, j] == m] * exp(bias[n, j]))``, which is
    ``-inf`` for unlisted blocks, ``0`` for a block listed once without bias and ``log(c)`` for a block listed ``c``
    times (the multiset semantics). Computed in the input dtype.
    """
    B, Nq, Tq, H, D = query.shape
    _, Nk, Tk, _, Dv = value.shape
    topk = block_index.shape[-1]
    dtype = query.dtype
    if bias is None:
        bias = torch.zeros((B, 1, Nq, topk), dtype=dtype, device=query.device)
    onehot = F.one_hot(block_index.long(), Nk).to(torch.bool)  # [B, Hi, Nq, topk, Nk]
    slot_bias = bias.to(dtype)[..., None]  # [B, Hb, Nq, topk, 1]
    block_bias = torch.where(onehot, slot_bias, torch.full_like(slot_bias, float('-inf'))).logsumexp(dim=3)
    block_bias = block_bias.expand(B, H, Nq, Nk)
    token_bias = block_bias[:, :, :, None, :, None].expand(B, H, Nq, Tq, Nk, Tk).reshape(B, H, Nq * Tq, Nk * Tk)
    if key_mask is not None:
        token_bias = token_bias + key_bias(key_mask, dtype).reshape(B, 1, 1, Nk * Tk)
    q = query.reshape(B, Nq * Tq, H, D).transpose(1, 2)
    k = key.reshape(B, Nk * Tk, H, D).transpose(1, 2)
    v = value.reshape(B, Nk * Tk, H, Dv).transpose(1, 2)
    logits = (q * scale) @ k.transpose(-2, -1) + token_bias
    empty = torch.isneginf(logits).all(dim=-1, keepdim=True)  # queries with no attendable key
    attn = torch.softmax(logits.masked_fill(empty, 0.), dim=-1).masked_fill(empty, 0.)
    out = attn @ v  # [B, H, Nq*Tq, Dv]
    return out.transpose(1, 2).reshape(B, Nq, Tq, H, Dv)
