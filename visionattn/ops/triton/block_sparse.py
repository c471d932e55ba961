"""Fused Triton kernels for block-sparse attention (``visionattn.ops.block_sparse``).

Forward: one program per (query tile, query block, batch * head); it walks the ``topk`` listed key blocks, reading K/V
straight from the ``[B, Nk, Tk, heads, D]`` tensors through the index list (nothing is gathered), with an online
softmax, and stores the output and the log-sum-exp. Backward: the same walk recomputes the probabilities from the
log-sum-exp, accumulates dQ in registers and adds dK/dV (and the per-slot bias gradient) into fp32 buffers with
atomics, so duplicate indices and blocks listed by many query blocks need no inverse index.
The PyTorch reference of these kernels is the ``blocked`` backend next to them (same math, same fp32 accumulation).
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._autotune import interpreting, smem_autotune
from ._jit import row_tile, softmax_step

__all__ = ['block_sparse_fwd_triton', 'block_sparse_bwd_triton']


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision='ieee')
    else:
        return tl.dot(a, b)


@triton.jit
def _bsa_fwd_kernel(
        Q, K, V, IDX, BIAS, KB, OUT, LSE,
        sqb, sqn, sqt, sqh, sqd,
        skb, skn, skt, skh, skd,
        svb, svn, svt, svh, svd,
        sob, son, sot, soh, sod,
        sib, sih, sin, sij,
        skbb, skbn, skbt,
        H, Nq, Tq, Tk, TOPK, scale,
        D: tl.constexpr, DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_KB: tl.constexpr, IEEE: tl.constexpr,
):
    n = tl.program_id(1)
    bh, b, h, offs_m, offs_d, offs_dv, m_mask, d_mask, dv_mask = row_tile(H, Tq, D, DV, 2, BLOCK_M, BLOCK_D, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(
        Q + b * sqb + n * sqn + offs_m[:, None] * sqt + h * sqh + offs_d[None, :] * sqd,
        mask=m_mask[:, None] & d_mask[None, :], other=0.)
    m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    slot = b * sib + h * sih + n * sin
    for j in range(0, TOPK):
        blk = tl.load(IDX + slot + j * sij)
        for n0 in range(0, Tk, BLOCK_N):
            kn = n0 + offs_n
            n_mask = kn < Tk
            k = tl.load(
                K + b * skb + blk * skn + kn[:, None] * skt + h * skh + offs_d[None, :] * skd,
                mask=n_mask[:, None] & d_mask[None, :], other=0.)
            s = _dot(q, tl.trans(k), IEEE) * scale
            if HAS_BIAS:
                s += tl.load(BIAS + slot + j * sij)
            if HAS_KB:
                kb = tl.load(KB + b * skbb + blk * skbn + kn * skbt, mask=n_mask, other=0.)
                s += kb[None, :]
            s = tl.where(n_mask[None, :], s, float('-inf'))
            p, alpha, m_new, l_i = softmax_step(s, m_i, l_i)
            v = tl.load(
                V + b * svb + blk * svn + kn[:, None] * svt + h * svh + offs_dv[None, :] * svd,
                mask=n_mask[:, None] & dv_mask[None, :], other=0.)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
            m_i = m_new
    has = l_i > 0.
    den = tl.where(has, l_i, 1.)
    out = tl.where(has[:, None], acc / den[:, None], 0.)
    lse = tl.where(has, tl.where(m_i == float('-inf'), 0., m_i) + tl.log(den), float('-inf'))
    tl.store(
        OUT + b * sob + n * son + offs_m[:, None] * sot + h * soh + offs_dv[None, :] * sod,
        out.to(OUT.dtype.element_ty), mask=m_mask[:, None] & dv_mask[None, :])
    tl.store(LSE + (bh * Nq + n) * Tq + offs_m, lse, mask=m_mask)


@triton.jit
def _bsa_bwd_kernel(
        Q, K, V, DO, LSE, DELTA, IDX, BIAS, KB, DQ, DK, DV, DBIAS,
        sqb, sqn, sqt, sqh, sqd,
        skb, skn, skt, skh, skd,
        svb, svn, svt, svh, svd,
        sdb, sdn, sdt, sdh, sdd,
        sib, sih, sin, sij,
        skbb, skbn, skbt,
        H, Nq, Tq, Tk, TOPK, scale,
        D: tl.constexpr, DV_: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_KB: tl.constexpr, IEEE: tl.constexpr,
):
    # DQ has q's layout and strides; DK / DV are fp32 buffers with k's / v's (contiguous) layout and strides; DO has
    # its own strides (sd*); DBIAS is fp32 with IDX's strides.
    n = tl.program_id(1)
    bh, b, h, offs_m, offs_d, offs_dv, m_mask, d_mask, dv_mask = row_tile(H, Tq, D, DV_, 2, BLOCK_M, BLOCK_D, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(
        Q + b * sqb + n * sqn + offs_m[:, None] * sqt + h * sqh + offs_d[None, :] * sqd,
        mask=m_mask[:, None] & d_mask[None, :], other=0.)
    do = tl.load(
        DO + b * sdb + n * sdn + offs_m[:, None] * sdt + h * sdh + offs_dv[None, :] * sdd,
        mask=m_mask[:, None] & dv_mask[None, :], other=0.)
    row = (bh * Nq + n) * Tq + offs_m
    lse = tl.load(LSE + row, mask=m_mask, other=float('inf'))
    lse = tl.where(lse == float('-inf'), float('inf'), lse)  # rows with nothing attendable: p = 0
    delta = tl.load(DELTA + row, mask=m_mask, other=0.)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    slot = b * sib + h * sih + n * sin
    for j in range(0, TOPK):
        blk = tl.load(IDX + slot + j * sij)
        dsum = tl.zeros([BLOCK_M], tl.float32)
        for n0 in range(0, Tk, BLOCK_N):
            kn = n0 + offs_n
            n_mask = kn < Tk
            k_off = b * skb + blk * skn + kn[:, None] * skt + h * skh + offs_d[None, :] * skd
            v_off = b * svb + blk * svn + kn[:, None] * svt + h * svh + offs_dv[None, :] * svd
            kmask = n_mask[:, None] & d_mask[None, :]
            vmask = n_mask[:, None] & dv_mask[None, :]
            k = tl.load(K + k_off, mask=kmask, other=0.)
            v = tl.load(V + v_off, mask=vmask, other=0.)
            s = _dot(q, tl.trans(k), IEEE) * scale
            if HAS_BIAS:
                s += tl.load(BIAS + slot + j * sij)
            if HAS_KB:
                kb = tl.load(KB + b * skbb + blk * skbn + kn * skbt, mask=n_mask, other=0.)
                s += kb[None, :]
            s = tl.where(n_mask[None, :], s, float('-inf'))
            p = tl.exp(s - lse[:, None])
            tl.atomic_add(DV + v_off, _dot(tl.trans(p.to(do.dtype)), do, IEEE), mask=vmask)
            dp = _dot(do, tl.trans(v), IEEE)
            ds = p * (dp - delta[:, None])
            dsum += tl.sum(ds, 1)
            ds = ds * scale
            dq += _dot(ds.to(k.dtype), k, IEEE)
            tl.atomic_add(DK + k_off, _dot(tl.trans(ds.to(q.dtype)), q, IEEE), mask=kmask)
        if HAS_BIAS:
            tl.atomic_add(DBIAS + slot + j * sij, tl.sum(dsum, 0))
    tl.store(
        DQ + b * sqb + n * sqn + offs_m[:, None] * sqt + h * sqh + offs_d[None, :] * sqd,
        dq.to(DQ.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def _smem_estimate(bm: int, bn: int, bd: int, bdv: int, stages: int, itemsize: int, backward: bool) -> int:
    """Upper estimate of a config's shared memory: ``stages`` buffered K/V tiles plus the layout-conversion scratch
    (checked against the compiled kernels by tests/ops/test_triton_compile.py)."""
    return stages * bn * (bd + bdv) * itemsize + (2 if backward else 1) * max(bm, bn) * max(bd, bdv) * 4


def _block_m(Tq: int) -> int:
    return max(16, min(64, triton.next_power_of_2(Tq)))


def _config_candidates(bm: int, Tk: int, bd: int, bdv: int, itemsize: int, backward: bool, limit: int
                       ) -> List[Tuple[int, int, int, int]]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` that fit ``limit`` bytes of shared memory: first the fixed
    choice, the largest tiles that fit (fewer pipeline stages first, which leaves the results unchanged); then, for
    the fp16/bf16 forward, the other key chunks and depths autotune may prefer (same BLOCK_M: it sets the grid)."""
    # the backward holds more [BLOCK_M, BLOCK_N] / [BLOCK_N, D] tiles (and fp32 the forward's FMA products): BLOCK_N
    # 32 keeps them in registers
    block_n = max(16, min(32 if backward or itemsize == 4 else 64, triton.next_power_of_2(Tk)))
    block_m = bm
    if backward and itemsize == 4 and max(bd, bdv) >= 128:
        block_m = min(block_m, 32)  # fp32 dQ and dK/dV products at head dim 128 spill with 64 rows
    candidates = [(block_m, block_n, 3), (block_m, block_n, 2), (block_m, min(block_n, 32), 2),
                  (min(block_m, 32), min(block_n, 32), 2), (min(block_m, 32), min(block_n, 32), 1),
                  (min(block_m, 32), 16, 1), (16, 16, 1)]
    fits = lambda m, n, s: _smem_estimate(m, n, bd, bdv, s, itemsize, backward) <= limit
    first = next((c for c in candidates if fits(*c)), candidates[-1])
    out = [first]
    if not backward and itemsize == 2 and first[0] == bm:
        out += [(bm, n, s) for n in (32, 64) for s in (2, 3)
                if (bm, n, s) != first and n <= max(16, triton.next_power_of_2(Tk)) and fits(bm, n, s)]
    # 8 warps (fewer registers per thread) for the forward at >= 256 bytes per row (fp32 at head dim >= 64, any dtype
    # at 128), the backward at >= 128 bytes
    warps = 8 if max(bd, bdv) * itemsize >= (128 if backward else 256) else 4
    return [(m, n, warps, s) for m, n, s in out]


def _blocks(q: Tensor, v: Tensor, Tk: int, backward: bool = False) -> Tuple[int, int, int, int, int, int]:
    """BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, num_warps, num_stages fixed for the current target: the first of
    ``_config_candidates``."""
    from ._target import shared_memory_limit
    bd, bdv = max(16, triton.next_power_of_2(q.shape[-1])), max(16, triton.next_power_of_2(v.shape[-1]))
    bm, bn, warps, stages = _config_candidates(_block_m(q.shape[2]), Tk, bd, bdv, q.element_size(), backward,
                                               shared_memory_limit())[0]
    return bm, bn, bd, bdv, warps, stages


def _fwd_candidates(args, limit: int) -> List[Tuple[int, int, int]]:
    return [(n, w, s) for m, n, w, s in _config_candidates(
        args['BLOCK_M'], args['Tk'], args['BLOCK_D'], args['BLOCK_DV'], args['Q'].element_size(), False, limit)
        if m == args['BLOCK_M']]


# the forward autotuned over the configs that fit the target (_autotune.py says why the backward is not)
_bsa_fwd_tuned = smem_autotune(
    _bsa_fwd_kernel, ['BLOCK_M', 'BLOCK_D', 'BLOCK_DV', 'HAS_BIAS', 'HAS_KB', 'Tk'], _fwd_candidates)


def block_sparse_fwd_triton(
        q: Tensor, k: Tensor, v: Tensor, idx: Tensor, bias: Optional[Tensor], kbias: Optional[Tensor], scale: float,
) -> Tuple[Tensor, Tensor]:
    """q/k/v: public layout; idx (int64) and bias (fp32): contiguous [B, H, Nq, topk]; kbias fp32 [B, Nk, Tk]."""
    B, Nq, Tq, H, D = q.shape
    _, Nk, Tk, _, Dv = v.shape
    out = torch.empty((B, Nq, Tq, H, Dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Nq, Tq), dtype=torch.float32, device=q.device)
    bm, bn, bd, bdv, warps, stages = _blocks(q, v, Tk)
    kb_strides = kbias.stride() if kbias is not None else (0, 0, 0)
    grid = (triton.cdiv(Tq, bm), Nq, B * H)
    # autotuned unless interpreted or the fixed config had to shrink BLOCK_M below the grid's
    tuned = not interpreting() and bm == _block_m(Tq)
    config = {} if tuned else dict(BLOCK_N=bn, num_warps=warps, num_stages=stages)
    (_bsa_fwd_tuned if tuned else _bsa_fwd_kernel)[grid](
        q, k, v, idx, bias if bias is not None else q, kbias if kbias is not None else q, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *idx.stride(), *kb_strides,
        H, Nq, Tq, Tk, idx.shape[-1], scale,
        D=D, DV=Dv, BLOCK_M=bm, BLOCK_D=bd, BLOCK_DV=bdv,
        HAS_BIAS=bias is not None, HAS_KB=kbias is not None, IEEE=q.dtype == torch.float32, **config,
    )
    return out, lse


def block_sparse_bwd_triton(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, idx: Tensor,
        bias: Optional[Tensor], kbias: Optional[Tensor], scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns dq, dk, dv (input dtypes) and dbias (fp32 [B, H, Nq, topk])."""
    B, Nq, Tq, H, D = q.shape
    _, Nk, Tk, _, Dv = v.shape
    delta = (dout.float() * out.float()).sum(-1).permute(0, 3, 1, 2).contiguous()  # [B, H, Nq, Tq]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    dq = torch.empty_like(q)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    dbias = torch.zeros(idx.shape, dtype=torch.float32, device=q.device)
    bm, bn, bd, bdv, warps, stages = _blocks(q, v, Tk, backward=True)
    kb_strides = kbias.stride() if kbias is not None else (0, 0, 0)
    grid = (triton.cdiv(Tq, bm), Nq, B * H)
    _bsa_bwd_kernel[grid](
        q, k, v, dout, lse, delta, idx, bias if bias is not None else q, kbias if kbias is not None else q,
        dq, dk, dv, dbias,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *idx.stride(), *kb_strides,
        H, Nq, Tq, Tk, idx.shape[-1], scale,
        D=D, DV_=Dv, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DV=bdv,
        HAS_BIAS=bias is not None, HAS_KB=kbias is not None, IEEE=q.dtype == torch.float32,
        num_warps=warps, num_stages=stages,
    )
    return dq, dk.to(k.dtype), dv.to(v.dtype), dbias
