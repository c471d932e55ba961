"""Pure-PyTorch backends of block-sparse attention (``visionattn.ops.block_sparse``): blocked, dense, gather.

* ``blocked``: memory-aware, chunks of query blocks and (when one query block's slots do not fit) steps of ``topk``
  slots with an online softmax; forward and hand-written recomputing backward (``blocked_forward`` /
  ``blocked_backward``, run through the ``visionattn::block_sparse_attn_fwd`` / ``_bwd`` custom ops).
* ``dense``: CPU, ``F.scaled_dot_product_attention`` over all tokens with the block lists as an additive mask.
* ``gather``: what the official BiFormer code does (expand K/V over the query blocks, gather, dense attention).
"""
import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._dispatch import counting_ops
from ..reference.block_sparse import key_bias

__all__ = [
    'accumulation_dtype', 'blocked_forward', 'blocked_backward', 'blocked_fused_forward', 'blocked_fused_backward',
    'block_sparse_dense', 'block_sparse_gather', 'dense_gain', 'dense_priority', 'dense_unsupported']


# --------------------------------------------------------------------------------------------------------------------
# gather (the official BiFormer way)
# --------------------------------------------------------------------------------------------------------------------

def block_sparse_gather(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        block_index: Tensor,
        scale: float,
        bias: Optional[Tensor] = None,
        key_mask: Optional[Tensor] = None,
) -> Tensor:
    """Expand K/V over the query blocks and gather the listed blocks (``topk`` copies of K/V), as BiFormer does."""
    B, Nq, Tq, H, D = query.shape
    _, Nk, Tk, _, Dv = value.shape
    Hi, topk = block_index.shape[1], block_index.shape[3]
    idx = block_index.long()
    if Hi == 1:
        # official layout: gather [B, Nq, topk, Tk, heads * (D + Dv)] from the channel-last K/V
        kv = torch.cat([key.reshape(B, Nk, Tk, H * D), value.reshape(B, Nk, Tk, H * Dv)], dim=-1)
        C = kv.shape[-1]
        kv_sel = torch.gather(
            kv[:, None].expand(B, Nq, Nk, Tk, C), dim=2, index=idx.view(B, Nq, topk, 1, 1).expand(B, Nq, topk, Tk, C))
        k_sel, v_sel = kv_sel.split([H * D, H * Dv], dim=-1)
        k_sel = k_sel.reshape(B, Nq, topk, Tk, H, D).permute(0, 4, 1, 2, 3, 5)  # [B, H, Nq, topk, Tk, D]
        v_sel = v_sel.reshape(B, Nq, topk, Tk, H, Dv).permute(0, 4, 1, 2, 3, 5)
    else:
        kh = key.permute(0, 3, 1, 2, 4)  # [B, H, Nk, Tk, D]
        vh = value.permute(0, 3, 1, 2, 4)
        gidx = idx.view(B, H, Nq, topk, 1, 1)
        k_sel = torch.gather(kh[:, :, None].expand(B, H, Nq, Nk, Tk, D), 3, gidx.expand(B, H, Nq, topk, Tk, D))
        v_sel = torch.gather(vh[:, :, None].expand(B, H, Nq, Nk, Tk, Dv), 3, gidx.expand(B, H, Nq, topk, Tk, Dv))
    q = query.permute(0, 3, 1, 2, 4)  # [B, H, Nq, Tq, D]
    logits = torch.einsum('bhnqd,bhnjkd->bhnqjk', q * scale, k_sel)
    if bias is not None:
        logits = logits + bias.to(logits.dtype)[:, :, :, None, :, None]
    if key_mask is not None:
        kb = key_bias(key_mask, logits.dtype)  # [B, Nk, Tk]
        kb_sel = kb[torch.arange(B, device=kb.device).view(B, 1, 1, 1), idx]  # [B, Hi, Nq, topk, Tk]
        logits = logits + kb_sel[:, :, :, None]
    logits = logits.flatten(-2)
    empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
    attn = torch.softmax(logits.masked_fill(empty, 0.), dim=-1).masked_fill(empty, 0.)
    out = attn @ v_sel.flatten(3, 4)  # [B, H, Nq, Tq, Dv]
    return out.permute(0, 2, 3, 1, 4)


# --------------------------------------------------------------------------------------------------------------------
# blocked (memory-aware pure PyTorch: chunks of query blocks, online softmax over the topk slots when needed)
# --------------------------------------------------------------------------------------------------------------------

def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# extra memory of one step of the blocked backend (the gathered key/value blocks of a chunk of query blocks, their
# logits and, in the backward, the gradients): a fraction of the K/V size, so neither pass holds a copy-sized temporary
# whatever the problem size, at least _BLOCKED_MIN_STEP_BYTES (small problems do not loop for nothing), at most
# _BLOCKED_STEP_BYTES (env VISIONATTN_BLOCKED_STEP_MB)
_BLOCKED_STEP_BYTES = int(os.environ.get('VISIONATTN_BLOCKED_STEP_MB', '64')) * 2 ** 20
_BLOCKED_KV_FRACTION = 4
_BLOCKED_MIN_STEP_BYTES = 2 * 2 ** 20


def _chunks(B: int, H: int, Nq: int, Tq: int, Tk: int, topk: int, per_slot_cols: int, per_block_cols: int, elem: int,
            kv_bytes: int) -> Tuple[int, int]:
    """(query blocks per chunk, slots per step) of the blocked passes under the step budget.

    ``per_slot_cols``: elements per key token of one query block and slot (gathered k/v, logits, ...);
    ``per_block_cols``: elements per query token of one query block (query chunk, accumulators). Whole query blocks with
    all their slots first; only when one query block's slots do not fit, one query block per chunk and steps of slots.
    """
    budget = min(_BLOCKED_STEP_BYTES, max(kv_bytes // _BLOCKED_KV_FRACTION, _BLOCKED_MIN_STEP_BYTES))
    per_slot = B * H * Tk * per_slot_cols * elem
    per_block = per_slot * topk + B * H * Tq * per_block_cols * elem
    if per_block <= budget:
        return max(1, min(Nq, budget // per_block)), topk
    return 1, max(1, min(topk, budget // per_slot))


def _slot_select(idx_c: Tensor, Nk: int) -> Tensor:
    """idx [B, Hi, n, c] -> flat rows [B * n * c] into a [B * Nk, ...] view when Hi = 1, else idx itself."""
    if idx_c.shape[1] != 1:
        return idx_c
    B = idx_c.shape[0]
    return (torch.arange(B, device=idx_c.device).view(B, 1, 1) * Nk + idx_c[:, 0]).reshape(-1)


def _gather_slots(src: Tensor, sel: Tensor, n: int, cc: int, dtype: torch.dtype) -> Tensor:
    """src [B, Nk, Tk, H, d] (contiguous) -> the listed blocks [B, H, n, cc * Tk, d] (contiguous, ``dtype``).

    ``sel``: flat rows from :func:`_slot_select` (one list for all heads: one ``index_select`` of whole rows) or the
    per-head index [B, H, n, cc] (advanced indexing on the heads-first view). Never a heads-first copy of ``src``.
    """
    B, Nk, Tk, H, d = src.shape
    if sel.ndim == 1:
        g = src.view(B * Nk, Tk * H * d).index_select(0, sel).view(B, n, cc, Tk, H, d).permute(0, 4, 1, 2, 3, 5)
    else:
        bi = torch.arange(B, device=src.device).view(B, 1, 1, 1)
        hi = torch.arange(H, device=src.device).view(1, H, 1, 1)
        g = src.permute(0, 3, 1, 2, 4)[bi, hi, sel]  # [B, H, n, cc, Tk, d]
    return g.to(dtype, memory_format=torch.contiguous_format).view(B, H, n, cc * Tk, d)


def _scatter_add_slots(dst: Tensor, sel: Tensor, contrib: Tensor) -> None:
    """Adds ``contrib`` [B, H, n, cc * Tk, d] into the listed blocks of ``dst`` [B, Nk, Tk, H, d] (inverse of
    :func:`_gather_slots`, duplicates summed)."""
    B, Nk, Tk, H, d = dst.shape
    c6 = contrib.view(B, H, -1, Tk, d)  # [B, H, n * cc, Tk, d]
    if sel.ndim == 1:
        dst.view(B * Nk, Tk * H * d).index_add_(0, sel, c6.permute(0, 2, 3, 1, 4).reshape(-1, Tk * H * d))
    else:
        bi = torch.arange(B, device=dst.device).view(B, 1, 1, 1)
        hi = torch.arange(H, device=dst.device).view(1, H, 1, 1)
        dst.permute(0, 3, 1, 2, 4).index_put_((bi, hi, sel), c6.view(*sel.shape, Tk, d), accumulate=True)


def _add_step_bias(s: Tensor, bias: Optional[Tensor], kbias: Optional[Tensor], idx_c: Tensor, n0: int, j0: int) -> None:
    """In place: adds the slot bias and the key-mask bias of slots ``j0 :`` of query blocks ``n0 :`` to the logits
    ``s`` [B, H, n, Tq, cc * Tk]."""
    if bias is None and kbias is None:
        return
    B, H, n, Tq, _ = s.shape
    cc = idx_c.shape[-1]
    s6 = s.view(B, H, n, Tq, cc, -1)
    if bias is not None:
        s6.add_(bias[:, :, n0:n0 + n, j0:j0 + cc, None, None].transpose(3, 4))
    if kbias is not None:
        s6.add_(kbias[torch.arange(B, device=s.device).view(B, 1, 1, 1), idx_c][:, :, :, None])


def blocked_forward(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        idx: Tensor,
        scale: float,
        bias: Optional[Tensor],
        kbias: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    """Public layout in and out: query [B, Nq, Tq, H, D], key/value [B, Nk, Tk, H, D|Dv] (contiguous), idx
    [B, H or 1, Nq, topk], bias [B, H, Nq, topk] (accumulation dtype), kbias [B, Nk, Tk] (accumulation dtype).

    Loops over chunks of query blocks (``_chunks``); a chunk gathers its routed key/value blocks straight from the
    inputs (``_gather_slots``), computes logits, an in-place softmax (online over steps of slots when a query block's
    slots exceed the budget) and writes its rows of the output (input dtype, public layout) and of the log-sum-exp
    [B, H, Nq, Tq] (accumulation dtype; -inf where nothing is attendable). Nothing but the output and the log-sum-exp
    is as large as Q, K or V.
    """
    B, Nq, Tq, H, D = query.shape
    Nk, Tk, Dv = key.shape[1], key.shape[2], value.shape[-1]
    topk = idx.shape[-1]
    acc_dtype = accumulation_dtype(query.dtype)
    kv_bytes = (key.numel() + value.numel()) * key.element_size()
    nq, c = _chunks(B, H, Nq, Tq, Tk, topk, D + Dv + Tq, D + Dv, torch.finfo(acc_dtype).bits // 8, kv_bytes)
    qh = query.permute(0, 3, 1, 2, 4)
    out = torch.empty((B, Nq, Tq, H, Dv), dtype=query.dtype, device=query.device)
    lse = torch.empty((B, H, Nq, Tq), dtype=acc_dtype, device=query.device)
    for n0 in range(0, Nq, nq):
        n1 = min(n0 + nq, Nq)
        q_c = qh[:, :, n0:n1].to(acc_dtype, memory_format=torch.contiguous_format, copy=True).mul_(scale)
        m: Optional[Tensor] = None
        den = acc = torch.empty(0)
        for j0 in range(0, topk, c):
            idx_c = idx[:, :, n0:n1, j0:j0 + c]  # [B, Hi, n, cc]
            cc = idx_c.shape[-1]
            sel = _slot_select(idx_c, Nk)
            s = q_c @ _gather_slots(key, sel, n1 - n0, cc, acc_dtype).transpose(-2, -1)  # [B, H, n, Tq, cc * Tk]
            _add_step_bias(s, bias, kbias, idx_c, n0, j0)
            m_s = s.amax(dim=-1)
            m_new = m_s if m is None else torch.maximum(m, m_s)
            m_safe = m_new.masked_fill(torch.isneginf(m_new), 0.)
            p = s.sub_(m_safe[..., None]).exp_()
            pv = p @ _gather_slots(value, sel, n1 - n0, cc, acc_dtype)
            if m is None:
                den, acc = p.sum(dim=-1), pv
            else:
                alpha = torch.exp(m - m_safe)
                den = den.mul_(alpha).add_(p.sum(dim=-1))
                acc = acc.mul_(alpha[..., None]).add_(pv)
            del s, p, pv
            m = m_new
        assert m is not None
        lse[:, :, n0:n1] = m.masked_fill(torch.isneginf(m), 0.) + torch.log(den)  # -inf where den = 0
        acc.div_(den.masked_fill(den == 0, 1.)[..., None])  # rows with den = 0 have acc = 0
        out[:, n0:n1] = acc.permute(0, 2, 3, 1, 4)
    return out, lse


def blocked_backward(
        dout: Tensor,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        out: Tensor,
        lse: Tensor,
        idx: Tensor,
        scale: float,
        bias: Optional[Tensor],
        kbias: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Public layout as :func:`blocked_forward`; recomputes the probabilities per chunk of query blocks and step of
    slots from the log-sum-exp. Returns dq, dk, dv (public layout, accumulation dtype) and dbias [B, H, Nq, topk]."""
    B, Nq, Tq, H, D = query.shape
    Nk, Tk, Dv = key.shape[1], key.shape[2], value.shape[-1]
    topk = idx.shape[-1]
    dev = query.device
    acc_dtype = accumulation_dtype(query.dtype)
    kv_bytes = (key.numel() + value.numel()) * key.element_size()
    nq, c = _chunks(B, H, Nq, Tq, Tk, topk, 2 * (D + Dv + Tq), 2 * (D + Dv), torch.finfo(acc_dtype).bits // 8,
                    kv_bytes)
    lse = torch.where(torch.isneginf(lse), float('inf'), lse).to(acc_dtype)  # p = 0 for rows with nothing attendable
    qh, doh, oh = (t.permute(0, 3, 1, 2, 4) for t in (query, dout, out))
    dq = torch.empty((B, Nq, Tq, H, D), dtype=acc_dtype, device=dev)
    dk = torch.zeros((B, Nk, Tk, H, D), dtype=acc_dtype, device=dev)
    dv = torch.zeros((B, Nk, Tk, H, Dv), dtype=acc_dtype, device=dev)
    dbias = torch.empty((B, H, Nq, topk), dtype=acc_dtype, device=dev)
    for n0 in range(0, Nq, nq):
        n1 = min(n0 + nq, Nq)
        n = n1 - n0
        q_c = qh[:, :, n0:n1].to(acc_dtype, memory_format=torch.contiguous_format)
        do_c = doh[:, :, n0:n1].to(acc_dtype, memory_format=torch.contiguous_format)
        delta = (do_c * oh[:, :, n0:n1]).sum(dim=-1, keepdim=True)  # [B, H, n, Tq, 1]
        lse_c = lse[:, :, n0:n1, :, None]
        dq_c: Optional[Tensor] = None
        for j0 in range(0, topk, c):
            idx_c = idx[:, :, n0:n1, j0:j0 + c]
            cc = idx_c.shape[-1]
            sel = _slot_select(idx_c, Nk)
            k_c = _gather_slots(key, sel, n, cc, acc_dtype)
            s = (q_c @ k_c.transpose(-2, -1)).mul_(scale)  # [B, H, n, Tq, cc * Tk]
            _add_step_bias(s, bias, kbias, idx_c, n0, j0)
            p = s.sub_(lse_c).exp_()
            _scatter_add_slots(dv, sel, p.transpose(-2, -1) @ do_c)
            ds = (do_c @ _gather_slots(value, sel, n, cc, acc_dtype).transpose(-2, -1)).sub_(delta).mul_(p)
            del s, p
            dbias[:, :, n0:n1, j0:j0 + cc] = ds.view(B, H, n, Tq, cc, Tk).sum(dim=(3, 5))
            ds.mul_(scale)
            dq_c = ds @ k_c if dq_c is None else dq_c.add_(ds @ k_c)
            _scatter_add_slots(dk, sel, ds.transpose(-2, -1) @ q_c)
            del ds, k_c
        assert dq_c is not None
        dq[:, n0:n1] = dq_c.permute(0, 2, 3, 1, 4)
    return dq, dk, dv, dbias


def blocked_fused_forward(q, k, v, idx, bias, kbias, scale):
    """The ``blocked`` implementation behind ``visionattn::block_sparse_attn_fwd``: q/k/v in the public layout; idx
    [B, H or 1, Nq, topk]; bias [B, H, Nq, topk]; kbias [B, Nk, Tk]. Returns (out, lse)."""
    acc_dtype = accumulation_dtype(q.dtype)
    return blocked_forward(q, k.contiguous(), v.contiguous(), idx, scale, None if bias is None else bias.to(acc_dtype),
                           None if kbias is None else kbias.to(acc_dtype))


def blocked_fused_backward(dout, q, k, v, out, lse, idx, bias, kbias, scale):
    """The ``blocked`` implementation behind ``visionattn::block_sparse_attn_bwd``: (dq, dk, dv, dbias)."""
    acc_dtype = accumulation_dtype(q.dtype)
    dq, dk, dv, dbias = blocked_backward(
        dout, q, k.contiguous(), v.contiguous(), out, lse, idx, scale, None if bias is None else bias.to(acc_dtype),
        None if kbias is None else kbias.to(acc_dtype))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias


def block_sparse_dense(query, key, value, block_index, scale, bias=None, key_mask=None):
    """Dense SDPA over all tokens with the block lists as an additive mask: ``log`` of how often each key block is
    listed (0 once, ``log 2`` twice: the multiset semantics; ``-inf`` unlisted)."""
    B, Nq, Tq, H, D = query.shape
    _, Nk, Tk, _, Dv = value.shape
    Hi = block_index.shape[1]
    count = torch.zeros((B, Hi, Nq, Nk), dtype=query.dtype, device=query.device)
    count.scatter_add_(-1, block_index.long(), count.new_ones(()).expand(block_index.shape))
    mask = count.log()[:, :, :, None, :, None].expand(B, Hi, Nq, Tq, Nk, Tk).reshape(B, Hi, Nq * Tq, Nk * Tk)
    out = F.scaled_dot_product_attention(
        query.reshape(B, Nq * Tq, H, D).transpose(1, 2), key.reshape(B, Nk * Tk, H, D).transpose(1, 2),
        value.reshape(B, Nk * Tk, H, Dv).transpose(1, 2), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(B, Nq, Tq, H, Dv)


# ``dense`` mask bytes above which it is never chosen by ``auto``
_DENSE_MAX_MASK_BYTES = 256 << 20


def dense_unsupported(query: Tensor, bias=None, key_mask=None, **kwargs) -> Optional[str]:
    if query.device.type != 'cpu':
        return 'a CPU path (the Triton kernel serves GPUs)'
    if counting_ops():
        return 'inside opaque_ops(): the block-sparse custom op runs, so FLOP counters see its formula'
    if bias is not None or key_mask is not None:
        return 'bias and key_mask are not supported (a fully masked query row would give NaN in SDPA)'
    return None


def dense_gain(key: Tensor, block_index: Tensor) -> float:
    """How many times faster dense SDPA is than ``blocked`` on CPU by the cost model of :func:`dense_priority`."""
    return block_index.shape[-1] / key.shape[1] * 13. * (key.shape[2] / 4.) ** -0.6


def dense_priority(query: Tensor, key: Tensor, block_index: Tensor, **kwargs) -> int:
    """Above ``blocked`` where dense SDPA over all tokens is the faster one on CPU. Cost model fitted to
    benchmarks/bsa_cpu_2026-11-22.md (BiFormer's shapes, fp32, 1 thread): per computed pair ``blocked`` costs
    ``f(T) = 13 (T / 4) ** -0.6`` times dense SDPA's for key blocks of ``T`` tokens (13x at 4 tokens, 2.5x at 64:
    small blocks make small matmuls), so dense wins where ``topk / Nk * f(T) > 1`` (BiFormer's 14x14 stage,
    topk 16 of 49 blocks of 4 tokens: 4.3, measured 4.5x; 56x56 topk 16 of blocks of 64: 0.82, measured 0.81x)."""
    B, Nq, Tq, H, _ = query.shape
    Nk, Tk = key.shape[1], key.shape[2]
    mask_bytes = B * block_index.shape[1] * Nq * Tq * Nk * Tk * query.element_size()
    return 25 if dense_gain(key, block_index) > 1. and mask_bytes <= _DENSE_MAX_MASK_BYTES else 5

