"""Block-sparse attention: each query block attends to the key blocks named in an index list.

Layout (heads-last, like the project's other ops): tokens are grouped in blocks (regions) up front, so

* ``query``: ``[B, Nq, Tq, heads, D]`` (``Nq`` query blocks of ``Tq`` tokens),
* ``key``:   ``[B, Nk, Tk, heads, D]``,
* ``value``: ``[B, Nk, Tk, heads, Dv]``,
* ``block_index``: integer ``[B, heads or 1, Nq, topk]``, the key blocks each query block attends to,
* ``bias`` (optional): float ``[B, heads or 1, Nq, topk]``, added to the logits of every key of that slot,
* ``key_mask`` (optional): bool ``[B, Nk, Tk]``, ``False`` marks keys that no query may attend (e.g. padding).

Query token ``t`` of block ``n`` attends to the union of the listed key blocks with one softmax over all of them:
``softmax_j,s(scale * q . k[idx[n, j], s] + bias[n, j])``. The list is a multiset: a block listed twice contributes its
keys twice to the softmax (what the official BiFormer gather does), i.e. the same as listing it once with
``bias + log(2)``. A query whose listed keys are all masked gets a zero output (and zero gradients).

Backends (``backend='auto'`` picks the first that can run, see ``visionattn.ops._dispatch``); the pure-PyTorch ones
live in ``visionattn.ops.blocked.block_sparse``, the oracle in ``visionattn.ops.reference.block_sparse``, the kernels
in ``visionattn.ops.triton.block_sparse``. This module holds the public function, the argument checks, the custom ops
that the ``blocked`` and ``triton`` backends share and the backend registration:

* ``triton``: fused forward and backward reading key blocks through the index list; CUDA tensors only (or any
  tensor with ``TRITON_INTERPRET=1``); fp32 / fp16 / bf16.
* ``cpu``: fused C++ forward and backward (``kernels/cpu/block_sparse.cpp``), reading K/V through the index list
  (strided BLAS GEMMs per query block and listed block for key blocks of >= 16 tokens, a row kernel below);
  ``auto`` prefers it to ``blocked`` everywhere (measured faster on every BiFormer shape) and to ``dense`` except
  where dense's cost-model gain over ``blocked`` exceeds 3 (small blocks listed densely).
* ``blocked``: pure PyTorch, memory-aware: loops over chunks of query blocks (and, when one query block's slots do not
  fit, over steps of ``topk`` slots with an online softmax); each step gathers its routed key/value blocks straight
  from the inputs (one ``index_select`` of whole rows when the heads share the list) under a budget of a quarter of
  the K/V size (at least 2 MiB, at most 64 MiB, env ``VISIONATTN_BLOCKED_STEP_MB``), with an in-place softmax, and has
  a hand-written backward that recomputes per step, so neither pass holds the ``topk``-times gathered K/V (nor any
  other temporary as large as K/V); the forward's peak is about the output.
* ``dense``: CPU, ``F.scaled_dot_product_attention`` over all tokens with the block lists as an additive mask (no bias
  or key mask). ``auto`` prefers it to ``blocked`` where a cost model fitted to benchmarks/bsa_cpu_2026-11-22.md says
  dense SDPA is faster: small blocks listed densely, e.g. BiFormer's 14x14 stage at 224 (topk 16 of 49 blocks of 4
  tokens; BiFormer-T whole-model inference 1.19x faster, benchmarks/biformer_dense_stage3_cpu_2026-11-23.json).
* ``gather``: what the official BiFormer code does (expand K/V over the query blocks, gather, dense attention).
* ``reference``: the oracle, dense attention over all tokens with the block list turned into a logit bias; under
  ``torch.export`` (ONNX, ExportedProgram) it runs ``block_sparse_gather_export``: the listed K/V blocks gathered
  by ``index_select`` (ONNX ``Gather``) per query block, linear in tokens, the same result.
"""
from typing import Optional, Tuple

import torch
from timm.layers import register_notrace_function
from torch import Tensor

from ._args import block_sparse_shapes, check_index_range
from ._custom_op import custom_op
from ._dispatch import get_backend, register_backend, triton_unsupported
from .blocked import block_sparse as _blocked
from .reference.block_sparse import block_sparse_attention_reference, key_bias

__all__ = ['block_sparse_attention', 'block_sparse_attention_reference']

_OP = 'block_sparse_attention'


def _check_inputs(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        block_index: Tensor,
        bias: Optional[Tensor],
        key_mask: Optional[Tensor],
        check_index: bool = True,
) -> None:
    B, Nq, Tq, H, D, Nk, Tk, _ = block_sparse_shapes(query, key, value, 'block_sparse_attention')
    if not (query.dtype == key.dtype == value.dtype) or not query.is_floating_point():
        raise ValueError(
            f'block_sparse_attention: query/key/value must share one floating dtype, got {query.dtype}, {key.dtype}, '
            f'{value.dtype}')
    if block_index.ndim != 4 or block_index.shape[0] != B or block_index.shape[1] not in (1, H) \
            or block_index.shape[2] != Nq or block_index.shape[3] < 1:
        raise ValueError(
            f'block_sparse_attention: block_index must be [B={B}, heads={H} or 1, Nq={Nq}, topk>=1], '
            f'got {tuple(block_index.shape)}')
    if block_index.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f'block_sparse_attention: block_index must be an integer tensor, got {block_index.dtype}')
    if bias is not None:
        topk = block_index.shape[3]
        if bias.ndim != 4 or bias.shape[0] != B or bias.shape[1] not in (1, H) or tuple(bias.shape[2:]) != (Nq, topk):
            raise ValueError(
                f'block_sparse_attention: bias must be [B={B}, heads={H} or 1, Nq={Nq}, topk={topk}], '
                f'got {tuple(bias.shape)}')
        if not bias.is_floating_point():
            raise ValueError(f'block_sparse_attention: bias must be floating point, got {bias.dtype}')
    if key_mask is not None:
        if key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, Nk, Tk):
            raise ValueError(
                f'block_sparse_attention: key_mask must be a bool tensor [B={B}, Nk={Nk}, Tk={Tk}], '
                f'got {key_mask.dtype} {tuple(key_mask.shape)}')
    if check_index and not torch.compiler.is_compiling():
        check_index_range(block_index, Nk, 'block_sparse_attention')


# --------------------------------------------------------------------------------------------------------------------
# custom ops shared by the blocked and triton backends (forward returns out + lse; backward recomputes)
# --------------------------------------------------------------------------------------------------------------------

def _impl(impl: str):
    """(forward, backward) of a fused implementation: ``forward(q, k, v, idx, bias, kbias, scale) -> (out, lse)``,
    ``backward(dout, q, k, v, out, lse, idx, bias, kbias, scale) -> (dq, dk, dv, dbias)``."""
    if impl == 'triton':
        from .triton.block_sparse import block_sparse_bwd_triton, block_sparse_fwd_triton
        return block_sparse_fwd_triton, block_sparse_bwd_triton
    return _blocked.blocked_fused_forward, _blocked.blocked_fused_backward


def _bsa_fwd(
        q: Tensor, k: Tensor, v: Tensor, idx: Tensor, bias: Optional[Tensor], kbias: Optional[Tensor],
        scale: float, impl: str,
) -> Tuple[Tensor, Tensor]:
    out, lse = _impl(impl)[0](q, k, v, idx, bias, kbias, scale)
    return out.contiguous(), lse.contiguous()


def _bsa_fwd_fake(q, k, v, idx, bias, kbias, scale, impl):
    B, Nq, Tq, H, _ = q.shape
    out = q.new_empty((B, Nq, Tq, H, v.shape[-1]))
    lse = q.new_empty((B, H, Nq, Tq), dtype=_blocked.accumulation_dtype(q.dtype))
    return out, lse


def _bsa_bwd(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, idx: Tensor,
        bias: Optional[Tensor], kbias: Optional[Tensor], scale: float, impl: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, dbias = _impl(impl)[1](dout.contiguous(), q, k, v, out, lse, idx, bias, kbias, scale)
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dbias.contiguous()


def _bsa_bwd_fake(dout, q, k, v, out, lse, idx, bias, kbias, scale, impl):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), lse.new_empty((*lse.shape[:3], idx.shape[-1]))


_bsa_fwd_op = custom_op(
    'visionattn::block_sparse_attn_fwd', _bsa_fwd, _bsa_fwd_fake,
    backward=_bsa_bwd, backward_name='visionattn::block_sparse_attn_bwd', backward_fake=_bsa_bwd_fake,
    backward_inputs=lambda i, o: (*i[:3], *o, *i[3:]),  # q, k, v, out, lse, idx, bias, kbias, scale, impl
    grad_inputs=('q', 'k', 'v', 'bias'))


def _fused(query, key, value, block_index, scale, bias, key_mask, impl):
    B, Nq, _, H, _ = query.shape
    topk = block_index.shape[-1]
    idx = block_index.to(torch.int64)
    # blocked: one list for all heads stays one (its forward then gathers whole rows); triton wants one per head
    idx = (idx if impl == 'blocked' else idx.expand(B, H, Nq, topk)).contiguous()
    b = None
    if bias is not None:
        # expanded to all heads; the head-sum of the gradient flows back through expand
        b = bias.to(_blocked.accumulation_dtype(query.dtype)).expand(B, H, Nq, topk).contiguous()
    kbias = None if key_mask is None else key_bias(key_mask, _blocked.accumulation_dtype(query.dtype))
    out, _ = _bsa_fwd_op(query, key, value, idx, b, kbias, float(scale), impl)
    return out


def _block_sparse_blocked(query, key, value, block_index, scale, bias=None, key_mask=None):
    """Memory-aware pure PyTorch backend (online softmax over the topk slots, recomputing backward)."""
    return _fused(query, key, value, block_index, scale, bias, key_mask, 'blocked')


def _block_sparse_triton(query, key, value, block_index, scale, bias=None, key_mask=None):
    """Fused Triton backend (reads key blocks through the index list; never materialises gathered K/V)."""
    return _fused(query, key, value, block_index, scale, bias, key_mask, 'triton')


def _triton_unsupported(query: Tensor, **kwargs) -> Optional[str]:
    return triton_unsupported(query, kwargs['value'])


register_backend(_OP, 'triton', _block_sparse_triton, priority=30, unsupported=_triton_unsupported)
register_backend(_OP, 'dense', _blocked.block_sparse_dense, priority=5, unsupported=_blocked.dense_unsupported,
                 priority_fn=_blocked.dense_priority)
register_backend(_OP, 'blocked', _block_sparse_blocked, priority=20)
register_backend(_OP, 'gather', _blocked.block_sparse_gather, priority=10)
register_backend(_OP, 'reference', block_sparse_attention_reference, priority=0)
from .cpu import block_sparse as _cpu_block_sparse  # noqa: E402,F401  (registers backend 'cpu': fused C++)


@register_notrace_function
def block_sparse_attention(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        block_index: Tensor,
        scale: Optional[float] = None,
        bias: Optional[Tensor] = None,
        key_mask: Optional[Tensor] = None,
        backend: str = 'auto',
        check_index: bool = True,
) -> Tensor:
    """Attention of query blocks over the key blocks listed in ``block_index`` (see the module docstring).

    Args:
        query: ``[B, Nq, Tq, heads, D]``, tokens grouped in ``Nq`` blocks of ``Tq``.
        key: ``[B, Nk, Tk, heads, D]``.
        value: ``[B, Nk, Tk, heads, Dv]``.
        block_index: integer ``[B, heads or 1, Nq, topk]``, values in ``[0, Nk)``; duplicates count twice.
        scale: logit scale, ``D ** -0.5`` if None.
        bias: optional ``[B, heads or 1, Nq, topk]`` added to the logits of each listed block (differentiable).
        key_mask: optional bool ``[B, Nk, Tk]``, ``False`` excludes a key.
        backend: ``'auto'``, ``'triton'``, ``'blocked'``, ``'gather'`` or ``'reference'``.
        check_index: check (eagerly) that the indices lie in ``[0, Nk)``; costs a device sync on CUDA. Callers whose
            indices are in range by construction (e.g. from ``topk``) pass False. Out-of-range indices are undefined
            behaviour for the Triton backend.

    Returns:
        ``[B, Nq, Tq, heads, Dv]``.
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if torch.jit.is_scripting():
        # TorchScript: the pure-PyTorch gather path (the official algorithm; no custom ops, no dispatch)
        return _blocked.block_sparse_gather(query, key, value, block_index, scale, bias, key_mask)
    _check_inputs(query, key, value, block_index, bias, key_mask, check_index)
    fn = get_backend(
        _OP, backend, query=query, key=key, value=value, block_index=block_index, bias=bias, key_mask=key_mask)
    return fn(query, key, value, block_index, scale, bias, key_mask)
from .flex import block_sparse as _flex_block_sparse  # noqa: E402,F401  (registers the 'flex' backend)
