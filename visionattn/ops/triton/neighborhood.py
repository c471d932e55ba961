"""Fused Triton kernels for generalized neighborhood attention (GNA), forward and backward.

One kernel family serves 1-D, 2-D and 3-D: inputs are viewed with three spatial axes (T, H, W), missing axes of
size 1 with kernel size 1. Each program owns one tile of queries inside one dilation group (in-group coordinates)
for one (batch, head); it walks the union of its queries' windows (a box, computed from the first and last query of
the tile since window bounds are monotonic) in chunks of ``BLOCK_N`` keys with an online softmax, masking each
(query, key) pair by the exact GNA window and adding the relative positional bias. Additional keys/values are a
second, unmasked loop in the same softmax. The backward recomputes the probabilities from the saved log-sum-exp,
writes dQ directly and accumulates dK, dV, d(rpb) and the additional-KV gradients with fp32 atomics.

Semantics are those of ``visionattn.ops.reference.gna_reference`` (NATTEN's GNA). PyTorch reference next to this
file: ``visionattn.ops.neighborhood.gna_blocked``.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._autotune import interpreting, smem_autotune

__all__ = ['gna_triton', 'gna_triton_unsupported']


@triton.jit
def _window(c, lg, K: tl.constexpr, S: tl.constexpr, CAUSAL: tl.constexpr):
    """[start, end) of the GNA window of in-group coordinate ``c`` on an axis of group length ``lg``."""
    if CAUSAL:
        leader = tl.minimum((c // S) * S + S - 1, lg - 1)
        start = tl.maximum(leader - K + 1, 0)
        end = c + 1
    else:
        leader = tl.minimum((c // S) * S + S // 2, lg - 1)
        centre = tl.minimum(tl.maximum(leader, K // 2), lg - 1 - (K // 2 + K % 2 - 1))
        start = centre - K // 2
        end = start + K
    return start, end


@triton.jit
def _tile_setup(
        pid0, LT, LH, LW,
        DT: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, NTILES,
        KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
        NTH, NTW, BLOCK_M: tl.constexpr,
):
    """Decode the program's dilation group and tile; per-query coordinates, windows and the tile's key box."""
    tile = pid0 % NTILES
    grp = pid0 // NTILES
    gw = grp % DW
    gh = (grp // DW) % DH
    gt = grp // (DW * DH)
    lgt = (LT - gt + DT - 1) // DT
    lgh = (LH - gh + DH - 1) // DH
    lgw = (LW - gw + DW - 1) // DW
    it = tile // (NTH * NTW)
    ih = (tile // NTW) % NTH
    iw = tile % NTW
    m = tl.arange(0, BLOCK_M)
    ct = it * TT + m // (TH * TW)
    ch = ih * TH + (m // TW) % TH
    cw = iw * TW + m % TW
    valid_m = (ct < lgt) & (ch < lgh) & (cw < lgw)
    ct = tl.minimum(ct, lgt - 1)
    ch = tl.minimum(ch, lgh - 1)
    cw = tl.minimum(cw, lgw - 1)
    st_t, en_t = _window(ct, lgt, KT, ST, CT)
    st_h, en_h = _window(ch, lgh, KH, SH, CH)
    st_w, en_w = _window(cw, lgw, KW, SW, CW)
    # key box of the tile: window start of its first query, window end of its last (bounds are monotonic)
    bt0, _ = _window(tl.minimum(it * TT, lgt - 1), lgt, KT, ST, CT)
    bh0, _ = _window(tl.minimum(ih * TH, lgh - 1), lgh, KH, SH, CH)
    bw0, _ = _window(tl.minimum(iw * TW, lgw - 1), lgw, KW, SW, CW)
    _, bt1 = _window(tl.minimum(it * TT + TT - 1, lgt - 1), lgt, KT, ST, CT)
    _, bh1 = _window(tl.minimum(ih * TH + TH - 1, lgh - 1), lgh, KH, SH, CH)
    _, bw1 = _window(tl.minimum(iw * TW + TW - 1, lgw - 1), lgw, KW, SW, CW)
    return (gt, gh, gw, ct, ch, cw, valid_m, st_t, en_t, st_h, en_h, st_w, en_w,
            bt0, bh0, bw0, bt1 - bt0, bh1 - bh0, bw1 - bw0)


@triton.jit
def _chunk(
        n0, bt0, bh0, bw0, RH, RW, R, gt, gh, gw, ct, ch, cw, valid_m,
        st_t, en_t, st_h, en_h, st_w, en_w,
        DT: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Keys ``n0 .. n0 + BLOCK_N`` of the tile's box: real coordinates, the pair mask and the flat rpb index."""
    idx = n0 + tl.arange(0, BLOCK_N)
    valid_n = idx < R
    kw = bw0 + idx % RW
    kh = bh0 + (idx // RW) % RH
    kt = bt0 + idx // (RW * RH)
    mask = (valid_m[:, None] & valid_n[None, :]
            & (kt[None, :] >= st_t[:, None]) & (kt[None, :] < en_t[:, None])
            & (kh[None, :] >= st_h[:, None]) & (kh[None, :] < en_h[:, None])
            & (kw[None, :] >= st_w[:, None]) & (kw[None, :] < en_w[:, None]))
    rel_t = tl.minimum(tl.maximum(kt[None, :] - ct[:, None] + KT - 1, 0), 2 * KT - 2)
    rel_h = tl.minimum(tl.maximum(kh[None, :] - ch[:, None] + KH - 1, 0), 2 * KH - 2)
    rel_w = tl.minimum(tl.maximum(kw[None, :] - cw[:, None] + KW - 1, 0), 2 * KW - 2)
    rel = (rel_t * (2 * KH - 1) + rel_h) * (2 * KW - 1) + rel_w
    return kt * DT + gt, kh * DH + gh, kw * DW + gw, valid_n, mask, rel


@triton.jit
def _gna_fwd_kernel(
        Q, K, V, Out, LSE, RPB, AK, AV,
        sqb, sqt, sqh, sqw, sqn,
        skb, skt, skh, skw, skn,
        svb, svt, svh, svw, svn,
        sakb, sakn, sakh, savb, savn, savh,
        NH, LT, LH, LW, HEAD_DIM, NEXTRA, NTILES, NTH, NTW, scale,
        KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        DT: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
        TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
        HAS_RPB: tl.constexpr, HAS_EXTRA: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid0 = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    head = bh % NH
    (gt, gh, gw, ct, ch, cw, valid_m, st_t, en_t, st_h, en_h, st_w, en_w,
     bt0, bh0, bw0, RT, RH, RW) = _tile_setup(
        pid0, LT, LH, LW, DT, DH, DW, TT, TH, TW, NTILES, KT, KH, KW, ST, SH, SW, CT, CH, CW, NTH, NTW, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    qt, qh, qw = ct * DT + gt, ch * DH + gh, cw * DW + gw
    q_off = b * sqb + qt * sqt + qh * sqh + qw * sqw + head * sqn
    q = tl.load(Q + q_off[:, None] + d[None, :], mask=valid_m[:, None] & dmask[None, :], other=0.)
    m_i = tl.full([BLOCK_M], -1e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    R = RT * RH * RW
    for n0 in range(0, R, BLOCK_N):
        kt, kh, kw, valid_n, mask, rel = _chunk(
            n0, bt0, bh0, bw0, RH, RW, R, gt, gh, gw, ct, ch, cw, valid_m, st_t, en_t, st_h, en_h, st_w, en_w,
            DT, DH, DW, KT, KH, KW, BLOCK_N)
        kv_mask = valid_n[:, None] & dmask[None, :]
        k = tl.load(K + (b * skb + kt * skt + kh * skh + kw * skw + head * skn)[:, None] + d[None, :],
                    mask=kv_mask, other=0.)
        v = tl.load(V + (b * svb + kt * svt + kh * svh + kw * svw + head * svn)[:, None] + d[None, :],
                    mask=kv_mask, other=0.)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
        if HAS_RPB:
            s += tl.load(RPB + head * (2 * KT - 1) * (2 * KH - 1) * (2 * KW - 1) + rel, mask=mask, other=0.)
        s = tl.where(mask, s, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    if HAS_EXTRA:
        for n0 in range(0, NEXTRA, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            valid_n = n < NEXTRA
            kv_mask = valid_n[:, None] & dmask[None, :]
            k = tl.load(AK + (b * sakb + n * sakn + head * sakh)[:, None] + d[None, :], mask=kv_mask, other=0.)
            v = tl.load(AV + (b * savb + n * savn + head * savh)[:, None] + d[None, :], mask=kv_mask, other=0.)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
            s = tl.where(valid_m[:, None] & valid_n[None, :], s, float('-inf'))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.)
    out = acc / l_safe[:, None]
    tok = ((b * LT + qt) * LH + qh) * LW + qw
    o_off = (tok * NH + head) * HEAD_DIM
    tl.store(Out + o_off[:, None] + d[None, :], out.to(Out.dtype.element_ty), mask=valid_m[:, None] & dmask[None, :])
    tl.store(LSE + tok * NH + head, m_i + tl.log(l_safe), mask=valid_m)


@triton.jit
def _gna_bwd_kernel(
        Q, K, V, DO, LSE, DELTA, RPB, AK, AV, DQ, DK, DV, DRPB, DAK, DAV,
        sqb, sqt, sqh, sqw, sqn,
        skb, skt, skh, skw, skn,
        svb, svt, svh, svw, svn,
        sakb, sakn, sakh, savb, savn, savh,
        NH, LT, LH, LW, HEAD_DIM, NEXTRA, NTILES, NTH, NTW, scale,
        KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        DT: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
        TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
        HAS_RPB: tl.constexpr, HAS_EXTRA: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid0 = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    head = bh % NH
    (gt, gh, gw, ct, ch, cw, valid_m, st_t, en_t, st_h, en_h, st_w, en_w,
     bt0, bh0, bw0, RT, RH, RW) = _tile_setup(
        pid0, LT, LH, LW, DT, DH, DW, TT, TH, TW, NTILES, KT, KH, KW, ST, SH, SW, CT, CH, CW, NTH, NTW, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    qt, qh, qw = ct * DT + gt, ch * DH + gh, cw * DW + gw
    q_off = b * sqb + qt * sqt + qh * sqh + qw * sqw + head * sqn
    qmask = valid_m[:, None] & dmask[None, :]
    q = tl.load(Q + q_off[:, None] + d[None, :], mask=qmask, other=0.)
    tok = ((b * LT + qt) * LH + qh) * LW + qw
    o_off = (tok * NH + head) * HEAD_DIM
    do = tl.load(DO + o_off[:, None] + d[None, :], mask=qmask, other=0.)
    lse = tl.load(LSE + tok * NH + head, mask=valid_m, other=0.)
    delta = tl.load(DELTA + tok * NH + head, mask=valid_m, other=0.)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    R = RT * RH * RW
    rpb_base = head * (2 * KT - 1) * (2 * KH - 1) * (2 * KW - 1)
    for n0 in range(0, R, BLOCK_N):
        kt, kh, kw, valid_n, mask, rel = _chunk(
            n0, bt0, bh0, bw0, RH, RW, R, gt, gh, gw, ct, ch, cw, valid_m, st_t, en_t, st_h, en_h, st_w, en_w,
            DT, DH, DW, KT, KH, KW, BLOCK_N)
        kv_mask = valid_n[:, None] & dmask[None, :]
        k = tl.load(K + (b * skb + kt * skt + kh * skh + kw * skw + head * skn)[:, None] + d[None, :],
                    mask=kv_mask, other=0.)
        v = tl.load(V + (b * svb + kt * svt + kh * svh + kw * svw + head * svn)[:, None] + d[None, :],
                    mask=kv_mask, other=0.)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
        if HAS_RPB:
            s += tl.load(RPB + rpb_base + rel, mask=mask, other=0.)
        p = tl.where(mask, tl.exp(s - lse[:, None]), 0.)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        kv_off = (((b * LT + kt) * LH + kh) * LW + kw) * NH + head
        dv_blk = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        tl.atomic_add(DV + kv_off[:, None] * HEAD_DIM + d[None, :], dv_blk, mask=kv_mask)
        dk_blk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION) * scale
        tl.atomic_add(DK + kv_off[:, None] * HEAD_DIM + d[None, :], dk_blk, mask=kv_mask)
        if HAS_RPB:
            tl.atomic_add(DRPB + rpb_base + rel, ds, mask=mask)
    if HAS_EXTRA:
        for n0 in range(0, NEXTRA, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            valid_n = n < NEXTRA
            kv_mask = valid_n[:, None] & dmask[None, :]
            k = tl.load(AK + (b * sakb + n * sakn + head * sakh)[:, None] + d[None, :], mask=kv_mask, other=0.)
            v = tl.load(AV + (b * savb + n * savn + head * savh)[:, None] + d[None, :], mask=kv_mask, other=0.)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
            p = tl.where(valid_m[:, None] & valid_n[None, :], tl.exp(s - lse[:, None]), 0.)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
            x_off = ((b * NEXTRA + n) * NH + head) * HEAD_DIM
            tl.atomic_add(DAV + x_off[:, None] + d[None, :],
                          tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION), mask=kv_mask)
            tl.atomic_add(DAK + x_off[:, None] + d[None, :],
                          tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION) * scale, mask=kv_mask)
    tl.store(DQ + o_off[:, None] + d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


# ---------------------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------------------

_DEFAULT_TILES = {1: (1, 1, 64), 2: (1, 8, 8), 3: (4, 4, 4)}


def _to3(x: Sequence, n: int, fill) -> tuple:
    return (fill,) * (3 - n) + tuple(x)


def _prepare(query, kernel_size, stride, dilation, is_causal, tile_shape):
    n = query.dim() - 3
    ks = _to3(kernel_size, n, 1)
    st = _to3(stride, n, 1)
    dil = _to3(dilation, n, 1)
    causal = _to3([bool(c) for c in is_causal], n, False)
    tile = _to3(tile_shape, n, 1) if tile_shape is not None else _DEFAULT_TILES[n]
    return n, ks, st, dil, causal, tile


def _view3(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, *spatial, heads, D] -> [B, T, H, W, heads, D] view; last dim made contiguous."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    for _ in range(3 - n):
        x = x.unsqueeze(1)
    return x


def _launch_geometry(shape3, dil, tile):
    lmax = [-(-shape3[i] // dil[i]) for i in range(3)]
    nt = [-(-lmax[i] // tile[i]) for i in range(3)]
    ntiles = nt[0] * nt[1] * nt[2]
    return ntiles, nt, ntiles * dil[0] * dil[1] * dil[2]


def _config_candidates(block_m: int, block_d: int, itemsize: int, backward: bool, limit: int
                       ) -> List[Tuple[int, int, int]]:
    """``(BLOCK_N, num_warps, num_stages)`` that fit ``limit`` bytes of shared memory (upper estimate: ``stages``
    buffered K/V chunks plus the layout-conversion scratch, checked against the compiled kernels by
    tests/ops/test_triton_compile.py). First the fixed choice, the largest that fits (fewer stages first, which leaves
    results unchanged); then, for the fp16/bf16 forward at head dim <= 64, the 64-key chunks autotune may prefer."""
    warps = 8 if block_d * itemsize >= 256 else 4  # 8 warps for fp32 at head dim >= 64, any dtype at 128
    if itemsize == 4 and block_d >= 128:  # fp32 at 128 spills with 32 keys (the forward with Triton 3.6: 178)
        fixed = [(16, 2), (16, 1)]
    else:
        fixed = [(32, 3), (32, 2), (16, 2), (16, 1)]
    fits = lambda bn, s: s * bn * 2 * block_d * itemsize + (2 if backward else 1) * block_m * block_d * 4 <= limit
    out = [next(((bn, s) for bn, s in fixed if fits(bn, s)), fixed[-1])]
    if not backward and itemsize == 2 and block_d <= 64:
        out += [c for c in ((64, 2), (64, 3)) if fits(*c)]
    return [(bn, warps, s) for bn, s in out]


def _launch_config(tile, head_dim: int, itemsize: int, block_n: Optional[int], backward: bool
                   ) -> Tuple[int, int, int]:
    """The fixed BLOCK_N, num_warps and num_stages for the current target (the first of ``_config_candidates``); an
    explicit ``block_n`` is kept, with the most stages that fit."""
    from ._target import shared_memory_limit
    limit = shared_memory_limit()
    bm, bd = tile[0] * tile[1] * tile[2], max(16, triton.next_power_of_2(head_dim))
    if block_n is None:
        return _config_candidates(bm, bd, itemsize, backward, limit)[0]
    for stages in (3, 2, 1):
        if stages * block_n * 2 * bd * itemsize + (2 if backward else 1) * bm * bd * 4 <= limit:
            break
    return block_n, 8 if bd * itemsize >= 256 else 4, stages


def _fwd_candidates(args, limit: int) -> List[Tuple[int, int, int]]:
    return _config_candidates(args['BLOCK_M'], args['BLOCK_D'], args['Q'].element_size(), False, limit)


# the forward autotuned over the configs that fit the target (_autotune.py says why the backward is not)
_gna_fwd_tuned = smem_autotune(
    _gna_fwd_kernel, ['BLOCK_M', 'BLOCK_D', 'KT', 'KH', 'KW', 'HAS_RPB', 'HAS_EXTRA'], _fwd_candidates)


def _extra_strides(x: Optional[torch.Tensor]) -> Tuple[int, int, int]:
    return (x.stride(0), x.stride(1), x.stride(2)) if x is not None else (0, 0, 0)


def _common_args(q, k, v, ak, av, ks, st, dil, causal, tile, n_heads, shape3, head_dim, n_extra, nts, ntiles, scale,
                 has_rpb, block_n):
    args = [
        *[q.stride(i) for i in range(5)], *[k.stride(i) for i in range(5)], *[v.stride(i) for i in range(5)],
        *_extra_strides(ak), *_extra_strides(av),
        n_heads, shape3[0], shape3[1], shape3[2], head_dim, n_extra, ntiles, nts[1], nts[2], scale,
    ]
    names = ('KT', 'KH', 'KW', 'ST', 'SH', 'SW', 'DT', 'DH', 'DW', 'CT', 'CH', 'CW', 'TT', 'TH', 'TW')
    kwargs = dict(zip(names, (*ks, *st, *dil, *causal, *tile)))
    kwargs.update({
        'HAS_RPB': has_rpb, 'HAS_EXTRA': n_extra > 0, 'BLOCK_M': tile[0] * tile[1] * tile[2], 'BLOCK_N': block_n,
        'BLOCK_D': max(16, triton.next_power_of_2(head_dim)),
        'DOT_PRECISION': 'ieee' if q.dtype == torch.float32 else 'tf32',
    })
    return args, kwargs


def _gna_triton_forward(q, k, v, kernel_size, stride, dilation, is_causal, rpb, scale, ak, av, tile_shape=None,
                        block_n=None):
    n, ks, st, dil, causal, tile = _prepare(q, kernel_size, stride, dilation, is_causal, tile_shape)
    q3, k3, v3 = _view3(q, n), _view3(k, n), _view3(v, n)
    b, shape3, n_heads, head_dim = q3.shape[0], tuple(q3.shape[1:4]), q3.shape[4], q3.shape[5]
    ntiles, nts, grid0 = _launch_geometry(shape3, dil, tile)
    out = torch.empty(q3.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q3.shape[:-1], dtype=torch.float32, device=q.device)
    rpb3 = rpb.reshape(n_heads, 2 * ks[0] - 1, 2 * ks[1] - 1, 2 * ks[2] - 1).contiguous() if rpb is not None else None
    ak = ak.contiguous() if ak is not None else None
    av = av.contiguous() if av is not None else None
    n_extra = ak.shape[1] if ak is not None else 0
    tuned = block_n is None and not interpreting()
    block_n, warps, stages = _launch_config(tile, head_dim, q.element_size(), block_n, backward=False)
    args, kwargs = _common_args(q3, k3, v3, ak, av, ks, st, dil, causal, tile, n_heads, shape3, head_dim, n_extra,
                                nts, ntiles, scale, rpb is not None, block_n)
    if tuned:
        del kwargs['BLOCK_N']
    else:
        kwargs.update(num_warps=warps, num_stages=stages)
    dummy = out
    (_gna_fwd_tuned if tuned else _gna_fwd_kernel)[(grid0, b * n_heads)](
        q3, k3, v3, out, lse, rpb3 if rpb3 is not None else dummy, ak if ak is not None else dummy,
        av if av is not None else dummy, *args, **kwargs)
    return out.reshape(q.shape), lse.reshape(q.shape[:-1])


def _gna_triton_backward(grad_out, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, rpb, scale, ak, av,
                         tile_shape=None, block_n=None):
    n, ks, st, dil, causal, tile = _prepare(q, kernel_size, stride, dilation, is_causal, tile_shape)
    q3, k3, v3 = _view3(q, n), _view3(k, n), _view3(v, n)
    b, shape3, n_heads, head_dim = q3.shape[0], tuple(q3.shape[1:4]), q3.shape[4], q3.shape[5]
    ntiles, nts, grid0 = _launch_geometry(shape3, dil, tile)
    do = grad_out.contiguous()
    delta = (do.float() * out.float()).sum(-1).contiguous()
    dq = torch.empty(q3.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(q3.shape, dtype=torch.float32, device=q.device)
    dv = torch.zeros(q3.shape, dtype=torch.float32, device=q.device)
    rpb3 = rpb.reshape(n_heads, 2 * ks[0] - 1, 2 * ks[1] - 1, 2 * ks[2] - 1).contiguous() if rpb is not None else None
    drpb = torch.zeros(rpb3.shape, dtype=torch.float32, device=q.device) if rpb is not None else None
    ak = ak.contiguous() if ak is not None else None
    av = av.contiguous() if av is not None else None
    n_extra = ak.shape[1] if ak is not None else 0
    dak = torch.zeros(ak.shape, dtype=torch.float32, device=q.device) if ak is not None else None
    dav = torch.zeros(av.shape, dtype=torch.float32, device=q.device) if av is not None else None
    block_n, warps, stages = _launch_config(tile, head_dim, q.element_size(), block_n, backward=True)
    args, kwargs = _common_args(q3, k3, v3, ak, av, ks, st, dil, causal, tile, n_heads, shape3, head_dim, n_extra,
                                nts, ntiles, scale, rpb is not None, block_n)
    kwargs.update(num_warps=warps, num_stages=stages)
    dummy = dk
    pick = lambda x: x if x is not None else dummy
    _gna_bwd_kernel[(grid0, b * n_heads)](
        q3, k3, v3, do, lse.contiguous(), delta, pick(rpb3), pick(ak), pick(av), dq, dk, dv, pick(drpb), pick(dak),
        pick(dav), *args, **kwargs)
    cast = lambda x, like: None if x is None else x.to(like.dtype).reshape(like.shape)
    return dq.reshape(q.shape), cast(dk, k), cast(dv, v), cast(drpb, rpb), cast(dak, ak), cast(dav, av)


# ---------------------------------------------------------------------------------------------------------------------
# Custom ops (torch.compile-traceable) with autograd
# ---------------------------------------------------------------------------------------------------------------------

@torch.library.custom_op('visionattn::gna_triton_fwd', mutates_args=())
def _gna_triton_fwd_op(
        query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: List[int], stride: List[int],
        dilation: List[int], is_causal: List[bool], rpb: Optional[torch.Tensor], scale: float,
        additional_keys: Optional[torch.Tensor], additional_values: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    return _gna_triton_forward(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale,
                               additional_keys, additional_values)


@_gna_triton_fwd_op.register_fake
def _(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys, additional_values):
    return torch.empty_like(query), query.new_empty(query.shape[:-1], dtype=torch.float32)


@torch.library.custom_op('visionattn::gna_triton_bwd', mutates_args=())
def _gna_triton_bwd_op(
        grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, out: torch.Tensor,
        lse: torch.Tensor, kernel_size: List[int], stride: List[int], dilation: List[int], is_causal: List[bool],
        rpb: Optional[torch.Tensor], scale: float, additional_keys: Optional[torch.Tensor],
        additional_values: Optional[torch.Tensor],
) -> List[torch.Tensor]:
    grads = _gna_triton_backward(grad_out, query, key, value, out, lse, kernel_size, stride, dilation, is_causal, rpb,
                                 scale, additional_keys, additional_values)
    return [g if g is not None else grad_out.new_empty(0) for g in grads]


@_gna_triton_bwd_op.register_fake
def _(grad_out, query, key, value, out, lse, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
      additional_values):
    xs = [query, key, value, rpb, additional_keys, additional_values]
    return [grad_out.new_empty(0) if x is None else torch.empty_like(x) for x in xs]


def _setup_context(ctx, inputs, output):
    q, k, v, ks, st, dil, causal, rpb, scale, ak, av = inputs
    out, lse = output
    ctx.has = [x is not None for x in (rpb, ak, av)]
    ctx.save_for_backward(q, k, v, out, lse, *[x for x in (rpb, ak, av) if x is not None])
    ctx.args = (ks, st, dil, causal, scale)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, *rest = ctx.saved_tensors
    it = iter(rest)
    rpb, ak, av = [next(it) if h else None for h in ctx.has]
    ks, st, dil, causal, scale = ctx.args
    dq, dk, dv, drpb, dak, dav = _gna_triton_bwd_op(
        grad_out.contiguous(), q, k, v, out, lse, ks, st, dil, causal, rpb, scale, ak, av)
    return (dq, dk, dv, None, None, None, None, drpb if rpb is not None else None, None,
            dak if ak is not None else None, dav if av is not None else None)


_gna_triton_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def gna_triton(query, key, value, kernel_size, stride, dilation, is_causal, rpb=None, scale=None,
               additional_keys=None, additional_values=None) -> torch.Tensor:
    """Fused Triton GNA (forward and backward kernels); arguments normalized to per-axis tuples."""
    scale = float(query.shape[-1] ** -0.5 if scale is None else scale)
    out, _ = _gna_triton_fwd_op(
        query, key, value, list(kernel_size), list(stride), list(dilation), [bool(c) for c in is_causal], rpb, scale,
        additional_keys, additional_values)
    return out


def gna_triton_unsupported(query, value, rpb=None, **kwargs) -> Optional[str]:
    """Why the Triton backend cannot run this call, or None."""
    if query.dim() - 3 > 3:
        return f'{query.dim() - 3}-D neighborhoods (Triton kernels cover 1-D, 2-D and 3-D)'
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f'dtype {query.dtype}'
    if value.shape[-1] != query.shape[-1]:
        return f'value head_dim {value.shape[-1]} differs from query head_dim {query.shape[-1]}'
    if not 16 <= query.shape[-1] <= 128:
        return f'head_dim {query.shape[-1]} outside 16..128'
    if rpb is not None and rpb.dtype != query.dtype:
        return f'rpb dtype {rpb.dtype} differs from query dtype {query.dtype}'
    if math.prod(query.shape) >= 2 ** 31:
        return 'tensor too large for int32 offsets'
    return None
