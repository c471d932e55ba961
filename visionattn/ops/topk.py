"""Top-k (per-row sparse) attention: every query attends to its own list of keys.

The attention of Sparsifiner (and of any per-query top-k connectivity): query ``i`` attends only to the keys listed in
``index[..., i, :]``, with one softmax over them; a few leading query rows (the class token) may attend to every key.
Unlike ``block_sparse_attention`` every query row has its own key set, so nothing is shared between queries.

Layout (heads-last, like the project's other ops):

* ``query``: ``[B, Nq, heads, D]``, ``key``: ``[B, Nk, heads, D]``, ``value``: ``[B, Nk, heads, Dv]``;
* ``index``: integer ``[B, heads, Nq - num_dense, K]``, the keys of query rows ``num_dense ..`` (distinct within a
  row, e.g. from ``topk``); the first ``num_dense`` query rows attend to all ``Nk`` keys.

``out[i] = sum_{j in S_i} softmax_j(scale * q_i . k_j) v_j``: exactly the dense attention with a boolean mask that is
True on the listed pairs (``topk_attention_reference``), at ``K / Nk`` of the dense work.

Backends (``backend='auto'`` picks the first that can run, see ``visionattn.ops._dispatch``):

* ``triton``: fused forward and backward, one program per (query tile, batch * head) reading the listed keys and
  values by index (nothing gathered in memory), online softmax over chunks of the list; CUDA tensors (or any
  tensor with ``TRITON_INTERPRET=1``); fp32 / fp16 / bf16.
* ``cpu``: a C kernel (``visionattn/ops/cpu/topk.c``, compiled on first use, see ``visionattn.ops.cpu``); CPU fp32 /
  fp64. Per query row: the listed keys' dot products eight at a time (one load of the query per eight keys; AVX2 +
  FMA where the CPU has it), the softmax over them, the listed value rows accumulated in registers; rows of one head
  in a row so its keys stay in cache; keys and values read through the index (strided views of a packed qkv
  projection need no copy); rows split over torch's threads. The backward is the ``sparse`` one. Measured on the
  project's CPU (2-core AMD EPYC, AVX2, 1 thread on an isolated core, DeiT-S shapes N = 197, 6 heads, 64 channels;
  ``tools/benchmark.py sparsifiner``, benchmarks/sparsifiner_evit_cpu_2026-11-23.md): 0.64-0.69x the time of dense
  SDPA at density 0.25 (batch 1) and 0.72-0.74x (batch 32), 0.35-0.41x at 0.1, 1.2-1.3x at 0.5, 2.2x at 1.0, where
  masked dense SDPA takes 1.3-2.3x: faster than ``masked_sdpa`` at every density, so ``auto`` takes it on CPU whenever
  it can run. It is bound by reading each listed key and value row (2 x 256 bytes per pair from L2: a per-row pattern
  shares no row between queries), hence about 2.2x the dense time per unit of density.
* ``sparse``: pure PyTorch on sparse kernels, any device: the scores are a sampled dense-dense product (SDDMM,
  ``torch.sparse.sampled_addmm`` over a CSR pattern of all query rows), the softmax runs over the ``K`` scores of
  each row, and ``softmax @ V`` is ``F.embedding_bag`` with per-sample weights (on CPU a JIT-compiled FBGEMM
  gather-and-accumulate kernel, about 2x MKL's CSR SpMM here). The backward scatters the probabilities into the
  dense ``[B, H, Nq, Nk]`` pattern and runs batched GEMMs (memory of one dense attention map, dense-GEMM speed).
  On the same CPU 1.4x (batch 1) to 2.3x (batch 32) the time of dense SDPA at density 0.25, 2.3-3.5x at 0.5; it
  breaks even near 10% density. ``auto`` uses it only where the ``cpu`` backend cannot run, up to 15% density (env
  ``VISIONATTN_TOPK_SPARSE_DENSITY``), and dense SDPA with the mask above; asked for by name it runs at any density.
* ``masked_sdpa``: ``F.scaled_dot_product_attention`` with the additive mask of the index (dense work).
* ``reference``: the oracle, dense attention with the boolean mask (O(Nq * Nk) memory).
"""
import ctypes
import os
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

from ._dispatch import get_backend, register_backend, triton_unsupported, use_opaque_ops

__all__ = ['topk_attention', 'topk_attention_reference', 'topk_index_to_mask', 'topk_indices']

_OP = 'topk_attention'


def _check_inputs(query: Tensor, key: Tensor, value: Tensor, index: Tensor, num_dense: int) -> None:
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            f'topk_attention expects query/key/value of shape [B, tokens, heads, head_dim], got {tuple(query.shape)}, '
            f'{tuple(key.shape)}, {tuple(value.shape)}')
    B, Nq, H, D = query.shape
    if key.shape[0] != B or key.shape[2:] != (H, D) or value.shape[:3] != key.shape[:3]:
        raise ValueError(
            f'topk_attention: key must be [B={B}, Nk, heads={H}, head_dim={D}] and value [B, Nk, heads, Dv]; got query '
            f'{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}')
    if not (query.dtype == key.dtype == value.dtype) or not query.is_floating_point():
        raise ValueError(f'topk_attention: query/key/value must share one floating dtype, got {query.dtype}, '
                         f'{key.dtype}, {value.dtype}')
    if not 0 <= num_dense <= Nq:
        raise ValueError(f'topk_attention: num_dense must be in [0, Nq={Nq}], got {num_dense}')
    if index.ndim != 4 or tuple(index.shape[:3]) != (B, H, Nq - num_dense) or index.shape[3] < 1 \
            or index.shape[3] > key.shape[1]:
        raise ValueError(
            f'topk_attention: index must be [B={B}, heads={H}, Nq - num_dense={Nq - num_dense}, K] with '
            f'1 <= K <= Nk={key.shape[1]}, got {tuple(index.shape)}')
    if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f'topk_attention: index must be an integer tensor, got {index.dtype}')


def topk_index_to_mask(index: Tensor, num_keys: int, num_dense: int = 0) -> Tensor:
    """The boolean ``[B, heads, num_dense + Nr, num_keys]`` attention mask of ``index`` ``[B, heads, Nr, K]`` (True:
    attend); the first ``num_dense`` rows are all True."""
    B, H, Nr, _ = index.shape
    mask = torch.zeros((B, H, num_dense + Nr, num_keys), dtype=torch.bool, device=index.device)
    mask[:, :, :num_dense] = True
    mask[:, :, num_dense:].scatter_(-1, index.long(), True)
    return mask


# --------------------------------------------------------------------------------------------------------------------
# reference (oracle)
# --------------------------------------------------------------------------------------------------------------------

def topk_attention_reference(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        index: Tensor,
        scale: float,
        num_dense: int = 0,
        dropout_p: float = 0.,
) -> Tensor:
    """The oracle: dense softmax attention with the boolean mask of ``index`` (``topk_index_to_mask``)."""
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, H, N, D]
    mask = topk_index_to_mask(index, k.shape[2], num_dense)
    attn = ((q * scale) @ k.transpose(-2, -1)).masked_fill(~mask, float('-inf')).softmax(dim=-1)
    if dropout_p > 0:
        attn = F.dropout(attn, dropout_p)
    return (attn @ v).transpose(1, 2)


# --------------------------------------------------------------------------------------------------------------------
# sparse (SDDMM + softmax + embedding_bag), any device
# --------------------------------------------------------------------------------------------------------------------

def _rows(t: Tensor, order: bool) -> Tuple[Tensor, int, int]:
    """A ``[rows, D]`` matrix view of ``t`` ``[B, N, H, D]`` whose row ``(b * sB + n * sN) / D + h`` is ``t[b, n, h]``
    (a strided view of a packed qkv projection needs no copy), with ``sB / D`` and ``sN / D``. With ``order`` the
    rows must increase with ``(b, n, h)``. Copies ``t`` when its strides do not allow such a view."""
    B, N, H, D = t.shape
    sB, sN, sH, sD = t.stride()
    ok = sD == 1 and sH == D and sB % D == 0 and sN % D == 0 and sB >= 0 and sN >= 0
    if ok and order:
        ok = (N == 1 or sN >= H * D) and (B == 1 or sB >= N * sN)
    if not ok:
        t = t.contiguous()
        sB, sN = N * H * D, H * D
    rows = ((B - 1) * sB + (N - 1) * sN) // D + H
    return t.as_strided((rows, D), (D, 1)), sB // D, sN // D


def _dense_rows(q: Tensor, k: Tensor, scale: float, num_dense: int) -> Tensor:
    """Softmax attention ``[B, H, nd, Nk]`` of the first ``num_dense`` query rows over all keys."""
    s = (q[:, :num_dense, None] * k[:, None]).sum(dim=-1) * scale  # [B, nd, Nk, H]
    return s.softmax(dim=2).permute(0, 3, 1, 2)


def _sparse_forward(
        q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float, num_dense: int, dropout_p: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns the output ``[B, Nq, H, Dv]``, the probabilities of the listed rows ``[B, Nq - nd, H, K]`` (dense rows
    are recomputed in the backward), their dropped-out version and the dense rows' dropped-out probabilities
    ``[B, H, nd, Nk]`` (both empty without dropout).

    The listed rows are one CSR matrix over matrix views of q, k, v (``_rows``; no copies), ``K`` nonzeros per listed
    query row and none in other rows: the scores are its SDDMM with ``q k^T``, ``softmax @ V`` an ``embedding_bag``
    over the rows of ``V``, whose output is already in the ``[B, N, H, Dv]`` layout. The dense rows (class token) are a
    small dense attention.
    """
    B, Nq, H, D = q.shape
    Dv = v.shape[-1]
    K = index.shape[-1]
    Nr = Nq - num_dense
    dev = q.device
    outs = []
    cd = q.new_empty(0)
    if num_dense:  # a few rows: broadcast products (a matmul with one query row is slower on strided K/V)
        attn = _dense_rows(q, k, scale, num_dense)  # [B, H, nd, Nk]
        if dropout_p > 0:
            attn = cd = F.dropout(attn, dropout_p)
        outs.append((attn.permute(0, 2, 3, 1)[..., None] * v[:, None]).sum(dim=2))  # [B, nd, H, Dv]
    p = pd = q.new_empty(0)
    if Nr:
        R = B * Nr * H
        itype = torch.int32 if q.is_cuda else torch.int64  # cuSPARSE SDDMM takes int32 indices
        q2, qb, qn = _rows(q[:, num_dense:], True)
        k2, kb, kn = _rows(k, False)
        v2, vb, vn = _rows(v, False)
        b_ = torch.arange(B, device=dev).view(B, 1, 1, 1)
        h_ = torch.arange(H, device=dev).view(1, 1, H, 1)
        idx = index.permute(0, 2, 1, 3).to(itype)  # [B, Nr, H, K]
        col_k = (b_ * kb + idx * kn + h_).reshape(R, K)
        col_v = col_k if (vb, vn) == (kb, kn) else (b_ * vb + idx * vn + h_).reshape(R, K)  # rows of each view
        qrows = (b_ * qb + torch.arange(Nr, device=dev).view(1, Nr, 1, 1) * qn + h_).reshape(-1)
        counts = torch.zeros(q2.shape[0], dtype=itype, device=dev).index_fill_(0, qrows, K)
        crow = F.pad(counts.cumsum(0, dtype=itype), (1, 0))
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support is in beta')
            pattern = torch.sparse_csr_tensor(
                crow, col_k.reshape(-1), q.new_zeros(R * K), size=(q2.shape[0], k2.shape[0]), check_invariants=False)
        s = torch.sparse.sampled_addmm(pattern, q2, k2.t(), beta=0., alpha=scale)
        p = s.values().view(R, K).softmax(dim=-1)
        pd = F.dropout(p, dropout_p) if dropout_p > 0 else p
        outs.append(F.embedding_bag(col_v, v2, mode='sum', per_sample_weights=pd).view(B, Nr, H, Dv))
        p = p.view(B, Nr, H, K)
        pd = pd.view(B, Nr, H, K) if dropout_p > 0 else q.new_empty(0)
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    return out, p, pd, cd


def _probs(
        q: Tensor, k: Tensor, index: Tensor, p: Tensor, dense: Optional[Tensor], scale: float, num_dense: int,
) -> Tensor:
    """The attention probabilities as a dense ``[B, H, Nq, Nk]`` map (zeros off the pattern); the dense rows are
    recomputed from q, k unless given."""
    B, Nq, H, _ = q.shape
    Nk = k.shape[1]
    P = q.new_zeros((B, H, Nq, Nk))
    if num_dense:
        if dense is None:
            dense = _dense_rows(q, k, scale, num_dense)
        P[:, :, :num_dense] = dense
    if Nq > num_dense:
        P[:, :, num_dense:].scatter_(-1, index.long(), p.transpose(1, 2))
    return P


def _sparse_backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, index: Tensor, p: Tensor, pd: Tensor, cd: Tensor,
        scale: float, num_dense: int, dropout_p: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Dense-pattern backward: the probabilities scattered into ``[B, H, Nq, Nk]``, then batched GEMMs."""
    qh, kh, vh, doh = (t.transpose(1, 2) for t in (q, k, v, dout))  # [B, H, N, .]
    P = _probs(q, k, index, p, None, scale, num_dense)
    dP = doh @ vh.transpose(-2, -1)  # [B, H, Nq, Nk]
    if dropout_p > 0:  # the dropped-out probabilities and the dropout factor (0 or 1 / (1 - p)) = Pd / P
        Pd = _probs(q, k, index, pd, cd if num_dense else None, scale, num_dense)
        dP = dP * torch.where(P > 0, Pd / P.clamp_min(torch.finfo(P.dtype).tiny), 0.)
    else:
        Pd = P
    dv = Pd.transpose(-2, -1) @ doh
    dS = P * (dP - (P * dP).sum(dim=-1, keepdim=True))  # zero off the pattern (P = 0 there)
    dq = (dS @ kh) * scale
    dk = (dS.transpose(-2, -1) @ qh) * scale
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


# --------------------------------------------------------------------------------------------------------------------
# cpu (C kernel, visionattn/ops/cpu/topk.c)
# --------------------------------------------------------------------------------------------------------------------

def _strides(t: Tensor) -> Tuple[Tensor, ctypes.Array]:
    """``t`` with unit channel stride (copied if needed) and its batch, token and head strides for the C kernel."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t, (ctypes.c_int64 * 3)(*t.stride()[:3])


def _cpu_forward(
        q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float, num_dense: int, need_probs: bool,
) -> Tuple[Tensor, Tensor]:
    """The C kernel's forward: the output and, with ``need_probs``, the listed rows' probabilities ``[B, Nq - nd, H,
    K]`` (the contract of ``_sparse_forward``, whose backward runs on them)."""
    from . import cpu
    B, Nq, H, D = q.shape
    Nk, Dv, K = k.shape[1], v.shape[-1], index.shape[-1]
    (q, qs), (k, ks), (v, vs) = _strides(q), _strides(k), _strides(v)
    index = index.to(torch.int64).contiguous()
    out = q.new_empty((B, Nq, H, Dv))
    probs = q.new_empty((B, Nq - num_dense, H, K) if need_probs and Nq > num_dense else (0,))
    lib = cpu.load()
    fn = lib.va_topk_attn_fwd_f64 if q.dtype == torch.float64 else lib.va_topk_attn_fwd_f32
    work = B * H * ((Nq - num_dense) * K + num_dense * Nk) * (D + Dv)
    threads = cpu.num_threads() if work >= 1 << 22 else 1  # small calls: one thread, no OpenMP team
    err = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), index.data_ptr(), out.data_ptr(),
             probs.data_ptr() if probs.numel() else None, B, Nq, Nk, H, D, Dv, K, num_dense, qs, ks, vs, scale,
             threads)
    if err == 2:
        raise ValueError(f'topk_attention: index values must be in [0, Nk={Nk}), got min {int(index.min())}, '
                         f'max {int(index.max())}')
    if err:
        raise MemoryError('topk_attention: the CPU kernel could not allocate its row buffers')
    return out, probs


# --------------------------------------------------------------------------------------------------------------------
# custom ops (opaque to torch.compile / FX), autograd
# --------------------------------------------------------------------------------------------------------------------

def _impl_forward(q, k, v, index, scale, num_dense, dropout_p, impl):
    if impl == 'triton':
        from .triton.topk import topk_attention_fwd_triton
        out, lse = topk_attention_fwd_triton(q, k, v, index, scale, num_dense)
        return out, lse, lse.new_empty(0), lse.new_empty(0)
    if impl in ('cpu', 'cpu_infer'):
        out, p = _cpu_forward(q, k, v, index, scale, num_dense, need_probs=impl == 'cpu')
        return out, p, p.new_empty(0), p.new_empty(0)
    return _sparse_forward(q, k, v, index, scale, num_dense, dropout_p)


@torch.library.custom_op('visionattn::topk_attn_fwd', mutates_args=())
def _topk_fwd_op(
        q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float, num_dense: int, dropout_p: float, impl: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns the output and what the backward needs: the listed rows' probabilities (``sparse``) or the log-sum-exp
    ``[B, H, Nq]`` (``triton``), and with dropout the dropped-out listed and dense-row probabilities."""
    out, a, b, c = _impl_forward(q, k, v, index, scale, num_dense, dropout_p, impl)
    return out.contiguous(), a.contiguous(), b.contiguous(), c.contiguous()


@_topk_fwd_op.register_fake
def _(q, k, v, index, scale, num_dense, dropout_p, impl):
    B, Nq, H, _ = q.shape
    out = q.new_empty((B, Nq, H, v.shape[-1]))
    if impl == 'triton':
        return out, q.new_empty((B, H, Nq - num_dense), dtype=torch.float32), q.new_empty(0), q.new_empty(0)
    shape = (B, Nq - num_dense, H, index.shape[-1]) if Nq > num_dense and impl != 'cpu_infer' else (0,)
    p = q.new_empty(shape)
    if dropout_p > 0:
        return out, p, q.new_empty(shape), q.new_empty((B, H, num_dense, k.shape[1]) if num_dense else (0,))
    return out, p, q.new_empty(0), q.new_empty(0)


@torch.library.custom_op('visionattn::topk_attn_bwd', mutates_args=())
def _topk_bwd_op(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, index: Tensor, a: Tensor, b: Tensor, c: Tensor,
        scale: float, num_dense: int, dropout_p: float, impl: str,
) -> Tuple[Tensor, Tensor, Tensor]:
    if impl == 'triton':
        from .triton.topk import topk_attention_bwd_triton
        dq, dk, dv = topk_attention_bwd_triton(dout.contiguous(), q, k, v, out, a, index, scale, num_dense)
    else:
        dq, dk, dv = _sparse_backward(dout, q, k, v, index, a, b, c, scale, num_dense, dropout_p)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@_topk_bwd_op.register_fake
def _(dout, q, k, v, out, index, a, b, c, scale, num_dense, dropout_p, impl):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, index, scale, num_dense, dropout_p, impl = inputs
    out, a, b, c = output
    ctx.save_for_backward(q, k, v, out, index, a, b, c)
    ctx.scale, ctx.num_dense, ctx.dropout_p, ctx.impl = scale, num_dense, dropout_p, impl


def _backward(ctx, dout, da, db, dc):
    q, k, v, out, index, a, b, c = ctx.saved_tensors
    dq, dk, dv = _topk_bwd_op(dout, q, k, v, out, index, a, b, c, ctx.scale, ctx.num_dense, ctx.dropout_p, ctx.impl)
    return dq, dk, dv, None, None, None, None, None


_topk_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _topk_sparse(query, key, value, index, scale, num_dense=0, dropout_p=0.):
    """CSR SDDMM + row softmax + embedding_bag (see the module docstring)."""
    return _topk_fwd_op(query, key, value, index, float(scale), int(num_dense), float(dropout_p), 'sparse')[0]


def _topk_cpu(query, key, value, index, scale, num_dense=0, dropout_p=0.):
    """The C kernel's forward (keys and values read through the index); the backward is the ``sparse`` one."""
    grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if not grad and not use_opaque_ops():  # eager inference: no autograd, skip the custom op's dispatch
        return _cpu_forward(query, key, value, index, float(scale), int(num_dense), need_probs=False)[0]
    return _topk_fwd_op(query, key, value, index, float(scale), int(num_dense), 0., 'cpu' if grad else 'cpu_infer')[0]


def _topk_triton(query, key, value, index, scale, num_dense=0, dropout_p=0.):
    """Fused Triton kernels reading keys and values through the index (nothing gathered)."""
    return _topk_fwd_op(query, key, value, index, float(scale), int(num_dense), 0., 'triton')[0]


def _topk_masked_sdpa(query, key, value, index, scale, num_dense=0, dropout_p=0.):
    """Dense ``F.scaled_dot_product_attention`` with the additive mask of ``index`` (0 / -inf)."""
    B, Nq, H, _ = query.shape
    mask = torch.full((B, H, Nq, key.shape[1]), float('-inf'), dtype=query.dtype, device=query.device)
    mask[:, :, :num_dense] = 0.
    mask[:, :, num_dense:].scatter_(-1, index.long(), 0.)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p,
        scale=scale)
    return out.transpose(1, 2)


def _triton_unsupported(query: Tensor, dropout_p: float = 0., **kwargs) -> Optional[str]:
    if dropout_p > 0:
        return 'attention dropout is not implemented in the kernel'
    return triton_unsupported(query, kwargs['value'])


# ``auto`` takes the sparse backend only up to this density ``K / Nk`` (env VISIONATTN_TOPK_SPARSE_DENSITY): above it
# dense SDPA with a mask is faster on CPU (measured, see the module docstring); asked for by name it runs at any density
_SPARSE_MAX_DENSITY = float(os.environ.get('VISIONATTN_TOPK_SPARSE_DENSITY', '0.15'))


def _cpu_unsupported(query: Tensor, dropout_p: float = 0., **kwargs) -> Optional[str]:
    if query.device.type != 'cpu':
        return 'needs CPU tensors'
    if query.dtype not in (torch.float32, torch.float64):
        return f'{query.dtype}: the C kernel runs float32 and float64'
    if dropout_p > 0:
        return 'attention dropout is not implemented in the kernel'
    from . import cpu
    return cpu.unavailable_reason()


def _sparse_unsupported(query: Tensor, **kwargs) -> Optional[str]:
    if query.dtype in (torch.float16, torch.bfloat16) and not query.is_cuda:
        return f'{query.dtype}: no CPU sampled_addmm kernel'
    return None


def _sparse_priority(key: Tensor, index: Tensor, **kwargs) -> int:
    # below the always-available reference above the density cap: ``auto`` never reaches it there
    return 15 if index.shape[-1] / max(key.shape[1], 1) <= _SPARSE_MAX_DENSITY else -10


register_backend(_OP, 'triton', _topk_triton, priority=30, unsupported=_triton_unsupported)
register_backend(_OP, 'cpu', _topk_cpu, priority=20, unsupported=_cpu_unsupported)
register_backend(_OP, 'sparse', _topk_sparse, priority=15, unsupported=_sparse_unsupported,
                 priority_fn=_sparse_priority)
register_backend(_OP, 'masked_sdpa', _topk_masked_sdpa, priority=10)
register_backend(_OP, 'reference', topk_attention_reference, priority=0)


@torch.library.custom_op('visionattn::topk_indices', mutates_args=())
def _topk_indices_op(scores: Tensor, k: int) -> Tensor:
    """CPU float32: the C kernel's exact selection, its flagged rows (ties, NaN) by ``torch.topk``."""
    from . import cpu
    lib = cpu.load()
    if lib is None:
        return scores.topk(k, dim=-1, sorted=False)[1]
    N = scores.shape[-1]
    x = scores.contiguous().view(-1, N)
    out = torch.empty((x.shape[0], k), dtype=torch.int64)
    fallback = torch.empty(x.shape[0], dtype=torch.uint8)
    threads = cpu.num_threads() if x.numel() >= 1 << 16 else 1
    if lib.va_topk_select_f32(x.data_ptr(), x.shape[0], N, N, k, out.data_ptr(), fallback.data_ptr(), threads):
        raise MemoryError('topk_indices: the CPU kernel could not allocate its row buffer')
    rows = fallback.nonzero().squeeze(1)
    if rows.numel():
        out[rows] = x[rows].topk(k, dim=-1, sorted=False)[1]
    return out.view(*scores.shape[:-1], k)


@_topk_indices_op.register_fake
def _(scores, k):
    return scores.new_empty((*scores.shape[:-1], k), dtype=torch.int64)


@register_notrace_function
def topk_indices(scores: Tensor, k: int) -> Tensor:
    """The indices of the ``k`` largest entries along the last dim of ``scores``: the set that
    ``scores.topk(k, dim=-1)`` returns, exactly (in an unspecified order, like ``sorted=False``).

    On CPU float32 a C kernel finds the ``k``-th largest value by an interpolated search over the floats' bit
    patterns (3.6x ``torch.topk`` at 197 scores, k = 50); rows with a tie at the ``k``-th value or a NaN, where
    torch's pick is its own implementation detail, are passed to ``torch.topk``, so the result never differs from it.
    Elsewhere (other devices and dtypes, TorchScript, no C compiler) this is ``torch.topk``.
    """
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f'topk_indices: k must be in [1, {scores.shape[-1]}] for scores of shape {tuple(scores.shape)}'
                         f', got {k}')
    if torch.jit.is_scripting() or scores.device.type != 'cpu' or scores.dtype != torch.float32:
        return scores.topk(k, dim=-1, sorted=False)[1]
    return _topk_indices_op(scores, k)


@register_notrace_function
def topk_attention(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        index: Tensor,
        scale: Optional[float] = None,
        num_dense: int = 0,
        dropout_p: float = 0.,
        backend: str = 'auto',
) -> Tensor:
    """Attention of every query over its own listed keys (see the module docstring).

    Args:
        query: ``[B, Nq, heads, D]``.
        key: ``[B, Nk, heads, D]``.
        value: ``[B, Nk, heads, Dv]``.
        index: integer ``[B, heads, Nq - num_dense, K]``: the keys of query rows ``num_dense ..``, distinct within a
            row, in ``[0, Nk)`` (not checked: they come from ``topk``).
        scale: logit scale, ``D ** -0.5`` if None.
        num_dense: The first ``num_dense`` query rows attend to every key (a class token).
        dropout_p: Dropout on the attention probabilities (training).
        backend: ``'auto'``, ``'triton'``, ``'sparse'`` or ``'reference'``.

    Returns:
        ``[B, Nq, heads, Dv]``.
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if torch.jit.is_scripting():
        return topk_attention_reference(query, key, value, index, scale, num_dense, dropout_p)
    _check_inputs(query, key, value, index, num_dense)
    fn = get_backend(_OP, backend, query=query, key=key, value=value, index=index, dropout_p=dropout_p)
    return fn(query, key, value, index, scale, num_dense, dropout_p)
