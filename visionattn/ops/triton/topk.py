"""Fused Triton kernels for top-k (per-row sparse) attention (``visionattn.ops.topk``).

Forward: one program per (tile of ``BLOCK_M`` listed query rows, batch * head). It walks the rows' key lists in chunks
of ``BLOCK_K``, reading each listed key and value row straight from the ``[B, N, heads, D]`` tensors through the index
(nothing is gathered in memory), with an online softmax in fp32, and stores the output and the log-sum-exp. Each kept
pair is its own dot product (``q_i . k_idx[i, j]``): per-row key sets share nothing between queries, so there is no
tile of keys to feed a tensor-core matmul. Backward: the same walk recomputes the probabilities from the log-sum-exp,
accumulates dQ in registers and adds dK / dV into fp32 buffers with atomics (a key is listed by many queries).
The dense rows (the class token) are a small dense attention in PyTorch around the kernels. The PyTorch reference of
the kernels is the ``sparse`` backend next to them (same math).
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._jit import row_tile, softmax_step

__all__ = ['topk_attention_fwd_triton', 'topk_attention_bwd_triton']


@triton.jit
def _topk_fwd_kernel(
        Q, K, V, IDX, OUT, LSE,
        sqb, sqn, sqh, sqd,
        skb, skn, skh, skd,
        svb, svn, svh, svd,
        sob, son, soh, sod,
        sib, sih, sin, sij,
        H, Nr, TOPK, scale,
        D: tl.constexpr, DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bh, b, h, offs_m, offs_d, offs_dv, m_mask, d_mask, dv_mask = row_tile(H, Nr, D, DV, 1, BLOCK_M, BLOCK_D, BLOCK_DV)
    offs_j = tl.arange(0, BLOCK_K)
    q = tl.load(Q + b * sqb + offs_m[:, None] * sqn + h * sqh + offs_d[None, :] * sqd,
                mask=m_mask[:, None] & d_mask[None, :], other=0.).to(tl.float32)
    m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for j0 in range(0, TOPK, BLOCK_K):
        j = j0 + offs_j
        jm = m_mask[:, None] & (j < TOPK)[None, :]
        idx = tl.load(IDX + b * sib + h * sih + offs_m[:, None] * sin + j[None, :] * sij, mask=jm, other=0)
        k = tl.load(K + b * skb + idx[:, :, None] * skn + h * skh + offs_d[None, None, :] * skd,
                    mask=jm[:, :, None] & d_mask[None, None, :], other=0.).to(tl.float32)
        s = tl.sum(q[:, None, :] * k, axis=2) * scale
        s = tl.where(jm, s, float('-inf'))
        p, alpha, m_new, l_i = softmax_step(s, m_i, l_i)
        v = tl.load(V + b * svb + idx[:, :, None] * svn + h * svh + offs_dv[None, None, :] * svd,
                    mask=jm[:, :, None] & dv_mask[None, None, :], other=0.).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v, axis=1)
        m_i = m_new
    den = tl.where(l_i > 0., l_i, 1.)
    out = acc / den[:, None]
    lse = tl.where(m_i == float('-inf'), 0., m_i) + tl.log(den)
    tl.store(OUT + b * sob + offs_m[:, None] * son + h * soh + offs_dv[None, :] * sod,
             out.to(OUT.dtype.element_ty), mask=m_mask[:, None] & dv_mask[None, :])
    tl.store(LSE + bh * Nr + offs_m, lse, mask=m_mask)


@triton.jit
def _topk_bwd_kernel(
        Q, K, V, DO, LSE, DELTA, IDX, DQ, DK, DV,
        sqb, sqn, sqh, sqd,
        skb, skn, skh, skd,
        svb, svn, svh, svd,
        sdb, sdn, sdh, sdd,
        sib, sih, sin, sij,
        H, Nr, TOPK, scale,
        D: tl.constexpr, DV_: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    # DQ / DK / DV: fp32 buffers with q's / k's / v's (contiguous) strides; DO: its own strides (sd*)
    bh, b, h, offs_m, offs_d, offs_dv, m_mask, d_mask, dv_mask = row_tile(H, Nr, D, DV_, 1, BLOCK_M, BLOCK_D, BLOCK_DV)
    offs_j = tl.arange(0, BLOCK_K)
    q = tl.load(Q + b * sqb + offs_m[:, None] * sqn + h * sqh + offs_d[None, :] * sqd,
                mask=m_mask[:, None] & d_mask[None, :], other=0.).to(tl.float32)
    do = tl.load(DO + b * sdb + offs_m[:, None] * sdn + h * sdh + offs_dv[None, :] * sdd,
                 mask=m_mask[:, None] & dv_mask[None, :], other=0.).to(tl.float32)
    lse = tl.load(LSE + bh * Nr + offs_m, mask=m_mask, other=0.)
    delta = tl.load(DELTA + bh * Nr + offs_m, mask=m_mask, other=0.)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, TOPK, BLOCK_K):
        j = j0 + offs_j
        jm = m_mask[:, None] & (j < TOPK)[None, :]
        idx = tl.load(IDX + b * sib + h * sih + offs_m[:, None] * sin + j[None, :] * sij, mask=jm, other=0)
        k_off = b * skb + idx[:, :, None] * skn + h * skh + offs_d[None, None, :] * skd
        v_off = b * svb + idx[:, :, None] * svn + h * svh + offs_dv[None, None, :] * svd
        kmask = jm[:, :, None] & d_mask[None, None, :]
        vmask = jm[:, :, None] & dv_mask[None, None, :]
        k = tl.load(K + k_off, mask=kmask, other=0.).to(tl.float32)
        v = tl.load(V + v_off, mask=vmask, other=0.).to(tl.float32)
        s = tl.sum(q[:, None, :] * k, axis=2) * scale
        p = tl.where(jm, tl.exp(s - lse[:, None]), 0.)
        tl.atomic_add(DV + v_off, p[:, :, None] * do[:, None, :], mask=vmask)
        dp = tl.sum(do[:, None, :] * v, axis=2)
        ds = p * (dp - delta[:, None]) * scale
        dq += tl.sum(ds[:, :, None] * k, axis=1)
        tl.atomic_add(DK + k_off, ds[:, :, None] * q[:, None, :], mask=kmask)
    tl.store(DQ + b * sqb + offs_m[:, None] * sqn + h * sqh + offs_d[None, :] * sqd, dq,
             mask=m_mask[:, None] & d_mask[None, :])


def _blocks(D: int, Dv: int, backward: bool = False) -> Tuple[int, int, int, int, int]:
    """BLOCK_M, BLOCK_K, BLOCK_D, BLOCK_DV, num_warps. The [BLOCK_M, BLOCK_K, BLOCK_D] products live in registers:
    at most 4096 elements in the forward and 2048 in the backward (which holds four of them) keep them from spilling
    (checked by tests/ops/test_triton_compile.py)."""
    bd, bdv = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(Dv))
    block_k = max(2, min(16, (2048 if backward else 4096) // (16 * max(bd, bdv))))
    return 16, block_k, bd, bdv, 8 if max(bd, bdv) >= 128 else 4


def _dense_rows(q: Tensor, k: Tensor, scale: float, num_dense: int) -> Tensor:
    """[B, H, nd, Nk] fp32 softmax attention of the first ``num_dense`` query rows over all keys."""
    s = torch.einsum('bihd,bjhd->bhij', q[:, :num_dense].float(), k.float()) * scale
    return s.softmax(dim=-1)


def topk_attention_fwd_triton(
        q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float, num_dense: int,
) -> Tuple[Tensor, Tensor]:
    """q/k/v ``[B, N, H, D]`` (any strides), index ``[B, H, Nq - nd, K]``; returns the output ``[B, Nq, H, Dv]`` and the
    fp32 log-sum-exp of the listed rows ``[B, H, Nq - nd]``."""
    B, Nq, H, D = q.shape
    Dv = v.shape[-1]
    Nr = Nq - num_dense
    out = torch.empty((B, Nq, H, Dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Nr), dtype=torch.float32, device=q.device)
    if num_dense:
        out[:, :num_dense] = torch.einsum(
            'bhij,bjhd->bihd', _dense_rows(q, k, scale, num_dense), v.float()).to(q.dtype)
    if Nr:
        idx = index.long().contiguous()
        qr, o = q[:, num_dense:], out[:, num_dense:]
        bm, bk, bd, bdv, warps = _blocks(D, Dv)
        grid = (triton.cdiv(Nr, bm), B * H)
        _topk_fwd_kernel[grid](
            qr, k, v, idx, o, lse,
            *qr.stride(), *k.stride(), *v.stride(), *o.stride(), *idx.stride(),
            H, Nr, idx.shape[-1], scale,
            D=D, DV=Dv, BLOCK_M=bm, BLOCK_K=bk, BLOCK_D=bd, BLOCK_DV=bdv, num_warps=warps,
        )
    return out, lse


def topk_attention_bwd_triton(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, index: Tensor, scale: float,
        num_dense: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns dq, dk, dv in the input dtypes."""
    B, Nq, H, D = q.shape
    Dv = v.shape[-1]
    Nr = Nq - num_dense
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the fp32 gradient buffers share their strides
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    if num_dense:  # the dense rows in PyTorch
        P = _dense_rows(q, k, scale, num_dense)  # [B, H, nd, Nk]
        do = dout[:, :num_dense].float()
        dv += torch.einsum('bhij,bihd->bjhd', P, do)
        dP = torch.einsum('bihd,bjhd->bhij', do, v.float())
        dS = P * (dP - (P * dP).sum(-1, keepdim=True)) * scale
        dq[:, :num_dense] = torch.einsum('bhij,bjhd->bihd', dS, k.float())
        dk += torch.einsum('bhij,bihd->bjhd', dS, q[:, :num_dense].float())
    if Nr:
        idx = index.long().contiguous()
        qr, dor, dqr = q[:, num_dense:], dout[:, num_dense:], dq[:, num_dense:]
        delta = (dor.float() * out[:, num_dense:].float()).sum(-1).permute(0, 2, 1).contiguous()  # [B, H, Nr]
        bm, bk, bd, bdv, warps = _blocks(D, Dv, backward=True)
        grid = (triton.cdiv(Nr, bm), B * H)
        _topk_bwd_kernel[grid](
            qr, k, v, dor, lse, delta, idx, dqr, dk, dv,
            *qr.stride(), *k.stride(), *v.stride(), *dor.stride(), *idx.stride(),
            H, Nr, idx.shape[-1], scale,
            D=D, DV_=Dv, BLOCK_M=bm, BLOCK_K=bk, BLOCK_D=bd, BLOCK_DV=bdv, num_warps=warps,
        )
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
