"""C-kernel backend of top-k attention and selection (``topk.c``, loaded by ``visionattn.ops.cpu``).

``cpu_forward`` runs the forward of backend ``cpu`` of ``visionattn.ops.topk_attention`` (its backward is the
``sparse`` one); ``topk_select`` the exact selection behind ``visionattn.ops.topk_indices``.
"""
import ctypes
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import load, num_threads, unavailable_reason

__all__ = ['cpu_forward', 'cpu_unsupported', 'topk_select']


def _strides(t: Tensor) -> Tuple[Tensor, ctypes.Array]:
    """``t`` with unit channel stride (copied if needed) and its batch, token and head strides for the C kernel."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t, (ctypes.c_int64 * 3)(*t.stride()[:3])


def cpu_forward(
        q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float, num_dense: int, need_probs: bool,
) -> Tuple[Tensor, Tensor]:
    """The C kernel's forward: the output and, with ``need_probs``, the listed rows' probabilities ``[B, Nq - nd, H,
    K]`` (the contract of ``visionattn.ops.blocked.topk.sparse_forward``, whose backward runs on them)."""
    B, Nq, H, D = q.shape
    Nk, Dv, K = k.shape[1], v.shape[-1], index.shape[-1]
    (q, qs), (k, ks), (v, vs) = _strides(q), _strides(k), _strides(v)
    index = index.to(torch.int64).contiguous()
    out = q.new_empty((B, Nq, H, Dv))
    probs = q.new_empty((B, Nq - num_dense, H, K) if need_probs and Nq > num_dense else (0,))
    lib = load()
    fn = lib.va_topk_attn_fwd_f64 if q.dtype == torch.float64 else lib.va_topk_attn_fwd_f32
    work = B * H * ((Nq - num_dense) * K + num_dense * Nk) * (D + Dv)
    threads = num_threads() if work >= 1 << 22 else 1  # small calls: one thread, no OpenMP team
    err = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), index.data_ptr(), out.data_ptr(),
             probs.data_ptr() if probs.numel() else None, B, Nq, Nk, H, D, Dv, K, num_dense, qs, ks, vs, scale,
             threads)
    if err == 2:
        raise ValueError(f'topk_attention: index values must be in [0, Nk={Nk}), got min {int(index.min())}, '
                         f'max {int(index.max())}')
    if err:
        raise MemoryError('topk_attention: the CPU kernel could not allocate its row buffers')
    return out, probs


def cpu_unsupported(query: Tensor, dropout_p: float = 0., **kwargs) -> Optional[str]:
    if query.device.type != 'cpu':
        return 'needs CPU tensors'
    if query.dtype not in (torch.float32, torch.float64):
        return f'{query.dtype}: the C kernel runs float32 and float64'
    if dropout_p > 0:
        return 'attention dropout is not implemented in the kernel'
    return unavailable_reason()


def topk_select(scores: Tensor, k: int) -> Tensor:
    """CPU float32: the C kernel's exact selection, its flagged rows (ties, NaN) by ``torch.topk``."""
    lib = load()
    if lib is None:
        return scores.topk(k, dim=-1, sorted=False)[1]
    N = scores.shape[-1]
    x = scores.contiguous().view(-1, N)
    out = torch.empty((x.shape[0], k), dtype=torch.int64)
    fallback = torch.empty(x.shape[0], dtype=torch.uint8)
    threads = num_threads() if x.numel() >= 1 << 16 else 1
    if lib.va_topk_select_f32(x.data_ptr(), x.shape[0], N, N, k, out.data_ptr(), fallback.data_ptr(), threads):
        raise MemoryError('topk_indices: the CPU kernel could not allocate its row buffer')
    rows = fallback.nonzero().squeeze(1)
    if rows.numel():
        out[rows] = x[rows].topk(k, dim=-1, sorted=False)[1]
    return out.view(*scores.shape[:-1], k)

