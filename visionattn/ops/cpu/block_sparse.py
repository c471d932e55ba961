"""Backend ``cpu`` of block-sparse attention: the fused C++ kernels of ``kernels/cpu/block_sparse.cpp`` as custom ops
with autograd (``visionattn::bsa_cpu_fwd`` / ``visionattn::bsa_cpu_bwd``).

The kernels read K/V through the index list (no gather), keep the multiset semantics (a block listed twice counts
twice), skip masked keys and give a query without keys a zero output. The custom ops take contiguous fp32/fp64
tensors with the index ``int64 [B, heads, Nq, topk]``, the bias ``[B, heads, Nq, topk]`` and the key mask ``uint8
[B, Nk, Tk]``, and raise ValueError on anything else (indices out of range included) before the kernel runs;
``block_sparse_cpu`` is the backend (any integer index, one list for all heads, fp16/bf16 computed in fp32).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._args import block_sparse_shapes, check_index_range
from .._dispatch import counting_ops
from . import _ext

__all__ = ['block_sparse_cpu', 'block_sparse_cpu_unsupported']

# key-block size (tokens) from which the kernels take their GEMM path (strided BLAS GEMMs per query block and listed
# block) over the row path (one query row against row pointers); negative: the GEMM path everywhere with the portable
# GEMM loop instead of the BLAS (tests). Measured in benchmarks/bsa_fused_cpu_gemm_2026-12-02.md.
GEMM_MIN_TOKENS = 16


def _check(q, k, v, idx, bias, key_mask, scale, name: str) -> None:
    B, Nq, Tq, H, D, Nk, Tk, _ = block_sparse_shapes(q, k, v, name)
    if q.dtype not in (torch.float32, torch.float64):
        raise ValueError(f'{name}: dtype {q.dtype} not supported (fp32, fp64)')
    for tname, t, dtype in (('query', q, q.dtype), ('key', k, q.dtype), ('value', v, q.dtype),
                            ('index', idx, torch.int64), ('bias', bias, q.dtype), ('key_mask', key_mask, torch.uint8)):
        if t is None:
            continue
        if t.device.type != 'cpu':
            raise ValueError(f'{name}: {tname} is on {t.device}, the kernel needs CPU tensors')
        if t.dtype != dtype:
            raise ValueError(f'{name}: {tname} has dtype {t.dtype}, expected {dtype}')
        if not t.is_contiguous():
            raise ValueError(f'{name}: {tname} must be contiguous, got strides {t.stride()} for shape {tuple(t.shape)}')
    if idx.dim() != 4 or tuple(idx.shape[:3]) != (B, H, Nq) or idx.shape[3] < 1:
        raise ValueError(f'{name}: index must be [B={B}, heads={H}, Nq={Nq}, topk>=1], got {tuple(idx.shape)}')
    if bias is not None and bias.shape != idx.shape:
        raise ValueError(f'{name}: bias must have the index shape {tuple(idx.shape)}, got {tuple(bias.shape)}')
    if key_mask is not None and tuple(key_mask.shape) != (B, Nk, Tk):
        raise ValueError(f'{name}: key_mask must be [B={B}, Nk={Nk}, Tk={Tk}], got {tuple(key_mask.shape)}')
    check_index_range(idx, Nk, name, what='index')


def _ensure_built() -> None:
    if not _ext.load():
        raise RuntimeError(_ext.unavailable_reason())


@torch.library.custom_op('visionattn::bsa_cpu_fwd', mutates_args=(), device_types='cpu')
def bsa_cpu_fwd(
        query: Tensor, key: Tensor, value: Tensor, index: Tensor, bias: Optional[Tensor], key_mask: Optional[Tensor],
        scale: float,
) -> Tuple[Tensor, Tensor]:
    """Fused forward: ``(out [B, Nq, Tq, heads, Dv], lse [B, heads, Nq, Tq])``."""
    _check(query, key, value, index, bias, key_mask, scale, 'bsa_cpu_fwd')
    _ensure_built()
    return torch.ops.visionattn_cpu.bsa_fwd(query, key, value, index, bias, key_mask, scale, GEMM_MIN_TOKENS)


@bsa_cpu_fwd.register_fake
def _(query, key, value, index, bias, key_mask, scale):
    B, Nq, Tq, H, _ = query.shape
    return query.new_empty((B, Nq, Tq, H, value.shape[-1])), query.new_empty((B, H, Nq, Tq))


@torch.library.custom_op('visionattn::bsa_cpu_bwd', mutates_args=(), device_types='cpu')
def bsa_cpu_bwd(
        grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, out: Tensor, lse: Tensor, index: Tensor,
        bias: Optional[Tensor], key_mask: Optional[Tensor], scale: float,
) -> List[Tensor]:
    """Gradients ``[dq, dk, dv, dbias [B, heads, Nq, topk]]``, recomputed from ``lse``."""
    _check(query, key, value, index, bias, key_mask, scale, 'bsa_cpu_bwd')
    B, Nq, Tq, H, _ = query.shape
    for tname, t, shape in (('grad_out', grad_out, out.shape), ('out', out, query.shape[:4] + value.shape[-1:]),
                            ('lse', lse, (B, H, Nq, Tq))):
        if tuple(t.shape) != tuple(shape) or t.dtype != query.dtype or not t.is_contiguous() or t.device.type != 'cpu':
            raise ValueError(f'bsa_cpu_bwd: {tname} must be a contiguous CPU {query.dtype} tensor of shape '
                             f'{list(shape)}, got {t.dtype} {list(t.shape)} (contiguous: {t.is_contiguous()})')
    _ensure_built()
    return list(torch.ops.visionattn_cpu.bsa_bwd(
        grad_out, query, key, value, out, lse, index, bias, key_mask, scale, GEMM_MIN_TOKENS))


@bsa_cpu_bwd.register_fake
def _(grad_out, query, key, value, out, lse, index, bias, key_mask, scale):
    return [torch.empty_like(query), torch.empty_like(key), torch.empty_like(value),
            query.new_empty(tuple(index.shape))]


def _setup_context(ctx, inputs, output):
    q, k, v, idx, bias, key_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, idx, bias, key_mask)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, idx, bias, key_mask = ctx.saved_tensors
    dq, dk, dv, dbias = bsa_cpu_bwd(grad_out.contiguous(), q, k, v, out, lse, idx, bias, key_mask, ctx.scale)
    return dq, dk, dv, None, dbias if bias is not None else None, None, None


bsa_cpu_fwd.register_autograd(_backward, setup_context=_setup_context)


def block_sparse_cpu(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        block_index: Tensor,
        scale: float,
        bias: Optional[Tensor] = None,
        key_mask: Optional[Tensor] = None,
) -> Tensor:
    """Block-sparse attention through the fused CPU kernels (the op's backend signature)."""
    dtype = query.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    B, Nq, _, H, _ = query.shape
    topk = block_index.shape[-1]
    q, k, v = (x.to(work).contiguous() for x in (query, key, value))
    idx = block_index.to(torch.int64).expand(B, H, Nq, topk).contiguous()
    b = None if bias is None else bias.to(work).expand(B, H, Nq, topk).contiguous()
    km = None if key_mask is None else key_mask.to(torch.uint8).contiguous()
    out, _ = bsa_cpu_fwd(q, k, v, idx, b, km, float(scale))
    return out.to(dtype)


def block_sparse_cpu_unsupported(query: Tensor, **kwargs) -> Optional[str]:
    """Why backend ``cpu`` cannot run this call, or None."""
    if query.device.type != 'cpu':
        return f'query is on {query.device}, the fused CPU kernels need CPU tensors'
    if query.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return f'dtype {query.dtype} not supported'
    if counting_ops():
        return 'FLOP counting (opaque_ops): the blocked custom op carries the formula'
    return _ext.unavailable_reason()


# dense's cost-model gain over ``blocked`` (``dense_gain``) above which dense SDPA also beats the fused kernels: they
# run 1.5-4x ``blocked`` on the GEMM path and 3-7x on the row path (benchmarks/bsa_fused_cpu_gemm_2026-12-02.md)
_DENSE_GAIN_OVER_CPU = 3.


def _cpu_priority(query: Tensor, key: Optional[Tensor] = None, block_index: Optional[Tensor] = None, **kwargs) -> int:
    # Measured side by side (benchmarks/bsa_fused_cpu_gemm_2026-12-02.md, BiFormer's stages, 1 thread): faster than
    # `blocked` on every shape, and than `dense` unless dense's gain is large: above `dense` (25), except for small
    # blocks listed densely (BiFormer's 14x14 stage at 224, topk 16 of 49 blocks of 4 tokens: gain 4.2, dense 1.2x
    # faster in the forward, even in the backward), where it stays just below it (still above `blocked`, 20).
    if key is None or block_index is None:
        return 26
    from ..blocked.block_sparse import dense_gain
    return 22 if dense_gain(key, block_index) > _DENSE_GAIN_OVER_CPU else 26


def _register() -> None:
    from .._dispatch import register_backend
    register_backend('block_sparse_attention', 'cpu', block_sparse_cpu, priority=22,
                     unsupported=block_sparse_cpu_unsupported, priority_fn=_cpu_priority)


_register()
