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

Backends (``backend='auto'`` picks the first that can run, see ``visionattn.ops._dispatch``; modules
``visionattn.ops.{triton,cpu,blocked,reference}.topk``; this module holds the public functions, the argument checks,
the custom ops the ``sparse``, ``cpu`` and ``triton`` backends share and the backend registration):

* ``triton``: fused forward and backward, one program per (query tile, batch * head) reading the listed keys and
  values by index (nothing gathered in memory), online softmax over chunks of the list; CUDA tensors (or any
  tensor with ``TRITON_INTERPRET=1``); fp32 / fp16 / bf16.
* ``cpu``: a C kernel (``kernels/cpu/topk.c``, compiled on first use, see ``visionattn.ops.cpu``); CPU fp32 /
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
from typing import Optional, Tuple

import torch
from timm.layers import register_notrace_function
from torch import Tensor

from ._custom_op import custom_op
from ._dispatch import get_backend, register_backend, triton_unsupported, use_opaque_ops
from .blocked import topk as _blocked
from .cpu import topk as _cpu
from .reference.topk import topk_attention_reference, topk_index_to_mask

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


# --------------------------------------------------------------------------------------------------------------------
# custom ops (opaque to torch.compile / FX), autograd
# --------------------------------------------------------------------------------------------------------------------

def _impl_forward(q, k, v, index, scale, num_dense, dropout_p, impl):
    if impl == 'triton':
        from .triton.topk import topk_attention_fwd_triton
        out, lse = topk_attention_fwd_triton(q, k, v, index, scale, num_dense)
        return out, lse, lse.new_empty(0), lse.new_empty(0)
    if impl in ('cpu', 'cpu_infer'):
        out, p = _cpu.cpu_forward(q, k, v, index, scale, num_dense, need_probs=impl == 'cpu')
        return out, p, p.new_empty(0), p.new_empty(0)
    return _blocked.sparse_forward(q, k, v, index, scale, num_dense, dropout_p)


def _topk_fwd(
        q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float, num_dense: int, dropout_p: float, impl: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns the output and what the backward needs: the listed rows' probabilities (``sparse``) or the log-sum-exp
    ``[B, H, Nq]`` (``triton``), and with dropout the dropped-out listed and dense-row probabilities."""
    out, a, b, c = _impl_forward(q, k, v, index, scale, num_dense, dropout_p, impl)
    return out.contiguous(), a.contiguous(), b.contiguous(), c.contiguous()


def _topk_fwd_fake(q, k, v, index, scale, num_dense, dropout_p, impl):
    B, Nq, H, _ = q.shape
    out = q.new_empty((B, Nq, H, v.shape[-1]))
    if impl == 'triton':
        return out, q.new_empty((B, H, Nq - num_dense), dtype=torch.float32), q.new_empty(0), q.new_empty(0)
    shape = (B, Nq - num_dense, H, index.shape[-1]) if Nq > num_dense and impl != 'cpu_infer' else (0,)
    p = q.new_empty(shape)
    if dropout_p > 0:
        return out, p, q.new_empty(shape), q.new_empty((B, H, num_dense, k.shape[1]) if num_dense else (0,))
    return out, p, q.new_empty(0), q.new_empty(0)


def _topk_bwd(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, index: Tensor, a: Tensor, b: Tensor, c: Tensor,
        scale: float, num_dense: int, dropout_p: float, impl: str,
) -> Tuple[Tensor, Tensor, Tensor]:
    if impl == 'triton':
        from .triton.topk import topk_attention_bwd_triton
        dq, dk, dv = topk_attention_bwd_triton(dout.contiguous(), q, k, v, out, a, index, scale, num_dense)
    else:
        dq, dk, dv = _blocked.sparse_backward(dout, q, k, v, index, a, b, c, scale, num_dense, dropout_p)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


def _topk_bwd_fake(dout, q, k, v, out, index, a, b, c, scale, num_dense, dropout_p, impl):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


_topk_fwd_op = custom_op(
    'visionattn::topk_attn_fwd', _topk_fwd, _topk_fwd_fake,
    backward=_topk_bwd, backward_name='visionattn::topk_attn_bwd', backward_fake=_topk_bwd_fake,
    # q, k, v, out, index, a, b, c, scale, num_dense, dropout_p, impl
    backward_inputs=lambda i, o: (*i[:3], o[0], i[3], *o[1:], *i[4:]),
    grad_inputs=('q', 'k', 'v'))


def _topk_sparse(query, key, value, index, scale, num_dense=0, dropout_p=0.):
    """CSR SDDMM + row softmax + embedding_bag (see the module docstring)."""
    return _topk_fwd_op(query, key, value, index, float(scale), int(num_dense), float(dropout_p), 'sparse')[0]


def _topk_cpu(query, key, value, index, scale, num_dense=0, dropout_p=0.):
    """The C kernel's forward (keys and values read through the index); the backward is the ``sparse`` one."""
    grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if not grad and not use_opaque_ops():  # eager inference: no autograd, skip the custom op's dispatch
        return _cpu.cpu_forward(query, key, value, index, float(scale), int(num_dense), need_probs=False)[0]
    return _topk_fwd_op(query, key, value, index, float(scale), int(num_dense), 0., 'cpu' if grad else 'cpu_infer')[0]


def _topk_triton(query, key, value, index, scale, num_dense=0, dropout_p=0.):
    """Fused Triton kernels reading keys and values through the index (nothing gathered)."""
    return _topk_fwd_op(query, key, value, index, float(scale), int(num_dense), 0., 'triton')[0]


def _triton_unsupported(query: Tensor, dropout_p: float = 0., **kwargs) -> Optional[str]:
    if dropout_p > 0:
        return 'attention dropout is not implemented in the kernel'
    return triton_unsupported(query, kwargs['value'])


register_backend(_OP, 'triton', _topk_triton, priority=30, unsupported=_triton_unsupported)
register_backend(_OP, 'cpu', _topk_cpu, priority=20, unsupported=_cpu.cpu_unsupported)
register_backend(_OP, 'sparse', _topk_sparse, priority=15, unsupported=_blocked.sparse_unsupported,
                 priority_fn=_blocked.sparse_priority)
register_backend(_OP, 'masked_sdpa', _blocked.topk_masked_sdpa, priority=10)
register_backend(_OP, 'reference', topk_attention_reference, priority=0)


def _topk_indices(scores: Tensor, k: int) -> Tensor:
    """CPU float32: the C kernel's exact selection, its flagged rows (ties, NaN) by ``torch.topk``."""
    return _cpu.topk_select(scores, k)


def _topk_indices_fake(scores, k):
    return scores.new_empty((*scores.shape[:-1], k), dtype=torch.int64)


_topk_indices_op = custom_op('visionattn::topk_indices', _topk_indices, _topk_indices_fake)


@register_notrace_function
def topk_indices(scores: Tensor, k: int) -> Tensor:
    """The indices of the ``k`` largest entries along the last dim of ``scores``: the set that
    ``scores.topk(k, dim=-1)`` returns, exactly (in an unspecified order, like ``sorted=False``).

    On CPU float32 a C kernel finds the ``k``-th largest value by an interpolated search over the floats' bit
    patterns; rows with a tie at the ``k``-th value or a NaN, where
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
