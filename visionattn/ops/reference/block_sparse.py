"""Reference (oracle) of block-sparse attention: dense attention over all tokens, the block lists as a logit bias.

Under ``torch.export`` (the ONNX and ``torch.export`` paths of ``visionattn.export``) the reference runs
:func:`block_sparse_gather_export` instead: the same result, linear in tokens, no ``[N, N]`` bias.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['block_sparse_attention_reference', 'block_sparse_gather_export', 'key_bias']


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
    times (the multiset semantics). Computed in the input dtype. Under ``torch.export`` it runs
    :func:`block_sparse_gather_export` (the same result, O(tokens x topk x block) memory).
    """
    if _is_exporting():
        return block_sparse_gather_export(query, key, value, block_index, scale, bias, key_mask)
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


def _is_exporting() -> bool:
    return not torch.jit.is_scripting() and torch.compiler.is_exporting()


def _select_blocks(x: Tensor, index: Tensor) -> Tensor:
    """Rows of ``x`` [G, M, ...] by ``index`` [G, ...] (values in ``[0, M)``): ``x[g, index[g, ...]]``.

    One ``index_select`` (ONNX ``Gather``) on the ``[G * M, rest]`` view with the group offsets added to the indices;
    not ``expand + torch.gather``, whose ONNX ``Expand`` would materialize ``x`` once per index row.
    """
    G, M = x.shape[0], x.shape[1]
    rows = x.reshape(G * M, -1)
    offset = (torch.arange(G, device=index.device) * M).reshape([-1] + [1] * (index.ndim - 1))
    out = rows.index_select(0, (index + offset).reshape(-1))
    return out.reshape(index.shape + x.shape[2:])


def block_sparse_gather_export(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        block_index: Tensor,
        scale: float,
        bias: Optional[Tensor] = None,
        key_mask: Optional[Tensor] = None,
) -> Tensor:
    """Block-sparse attention by gathering the listed key/value blocks per query block (the export formulation).

    Each query block's ``topk`` key/value blocks are selected by one ``index_select`` over the flattened
    ``[B * Nk, Tk * heads * D]`` rows (``[B * heads * Nk, Tk * D]`` for per-head lists), then each query attends to the
    ``topk * Tk`` selected keys with one softmax: memory and time O(tokens x topk x Tk), standard ONNX operators only
    (Gather, MatMul, Softmax, ...), every size symbolic. The same result as the dense reference: duplicate slots count
    twice, the slot bias is added to its block's logits, masked keys are excluded, a query with no attendable key (all
    its slots masked or at bias ``-inf``) gets zero. Computed in the input dtype; no backward of its own (autograd
    through the gathers).
    """
    B, Nq, Tq, H, D = query.shape
    Nk, Tk, Dv = value.shape[1], value.shape[2], value.shape[-1]
    Hi, topk = block_index.shape[1], block_index.shape[3]
    idx = block_index.long()
    if Hi == 1:
        # whole rows [Tk, heads, D] of the channel-last K/V: [B, Nq, topk, Tk, H, D] -> [B, Nq, H, topk * Tk, D]
        k_sel = _select_blocks(key, idx[:, 0]).permute(0, 1, 4, 2, 3, 5).reshape(B, Nq, H, topk * Tk, D)
        v_sel = _select_blocks(value, idx[:, 0]).permute(0, 1, 4, 2, 3, 5).reshape(B, Nq, H, topk * Tk, Dv)
    else:
        # per-head lists: rows [Tk, D] of the head-major K/V [B * H, Nk, Tk, D]: [B, H, Nq, topk, Tk, D]
        kh = key.permute(0, 3, 1, 2, 4).reshape(B * H, Nk, Tk, D)
        vh = value.permute(0, 3, 1, 2, 4).reshape(B * H, Nk, Tk, Dv)
        hidx = idx.reshape(B * H, Nq, topk)
        k_sel = _select_blocks(kh, hidx).reshape(B, H, Nq, topk * Tk, D).transpose(1, 2)
        v_sel = _select_blocks(vh, hidx).reshape(B, H, Nq, topk * Tk, Dv).transpose(1, 2)
    q = query.permute(0, 1, 3, 2, 4)  # [B, Nq, H, Tq, D]
    logits = (q * scale) @ k_sel.transpose(-2, -1)  # [B, Nq, H, Tq, topk * Tk]
    live: Optional[Tensor] = None  # [B, Nq, heads or 1, topk, Tk or 1]: a slot's key can be attended
    if bias is not None or key_mask is not None:
        logits = logits.reshape(B, Nq, H, Tq, topk, Tk)
        if bias is not None:
            b = bias.to(logits.dtype).permute(0, 2, 1, 3)  # [B, Nq, Hb, topk]
            logits = logits + b[:, :, :, None, :, None]
            live = ~torch.isneginf(b)[..., None]
        if key_mask is not None:
            sel = _select_blocks(key_mask, idx.transpose(1, 2))  # [B, Nq, Hi, topk, Tk]
            logits = logits + key_bias(sel, logits.dtype)[:, :, :, None]
            live = sel if live is None else live & sel
        logits = logits.reshape(B, Nq, H, Tq, topk * Tk)
    out = torch.softmax(logits, dim=-1) @ v_sel  # [B, Nq, H, Tq, Dv]
    if live is not None:
        # a query block whose slots are all masked or at bias -inf has no key: its (NaN) softmax rows give zero.
        # Decided per block on the small masks, not per logit (a full-size Where / Cast costs more than the softmax)
        empty = ~live.flatten(3).any(dim=-1)  # [B, Nq, heads or 1]
        out = out.masked_fill(empty[:, :, :, None, None], 0.)
    return out.transpose(2, 3)
