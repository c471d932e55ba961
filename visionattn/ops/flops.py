"""Counting what attention actually computes: multiply-accumulates of a model forward, sparse ops included.

``count_macs(model, x)`` runs ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, SDPA counted by
torch's formulas) with formulas for visionattn's sparse custom ops, which count only the attended pairs: for
neighborhood attention each query's window (exact per-axis neighbour counts, so causal and strided windows count
what they see) plus its additional keys; for block-sparse attention each query block's routed key blocks; for top-k
attention (Sparsifiner) each query row's listed keys (the class-token row all keys). The
dense-equivalent N^2 is never counted for them; TransNeXt's aggregated attention counts its k x k window slots and
pooled keys per query. Work that the CPU backend spends on tile halos is not counted:
the figure is the op's arithmetic, as papers report it. Returned as MACs (one multiply-add = 1; fvcore and the
papers' "FLOPs" use this unit).
"""
import math
from typing import Dict, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from . import aggregated as _aggregated  # noqa: F401  (registers the custom ops)
from . import block_sparse as _block_sparse  # noqa: F401
from . import neighborhood as _neighborhood  # noqa: F401
from . import topk as _topk  # noqa: F401
from ._dispatch import opaque_ops
from .reference import gna_axis_mask

__all__ = ['count_macs']


def _gna_pairs(shape, kernel_size, stride, dilation, is_causal) -> int:
    """Number of (query, key) pairs of a GNA window pattern over ``shape`` (product of the per-axis counts)."""
    pairs = 1
    for length, k, s, d, c in zip(shape, kernel_size, stride, dilation, is_causal):
        mask, _ = gna_axis_mask(length, k, s, d, c)
        pairs *= int(mask.sum())
    return pairs


@register_flop_formula(torch.ops.visionattn.gna_blocked)
def _gna_flops(query_shape, key_shape, value_shape, kernel_size, stride, dilation, is_causal, rpb_shape, scale,
               add_k_shape, add_v_shape, out_shape=None, **kwargs) -> int:
    batch, *spatial, heads, dim = query_shape
    pairs = _gna_pairs(spatial, kernel_size, stride, dilation, is_causal)
    if add_k_shape is not None:
        pairs += math.prod(spatial) * add_k_shape[-3]
    # q.k and p.v, 2 FLOPs per multiply-add (torch's convention; count_macs halves it)
    return 2 * batch * heads * pairs * (dim + value_shape[-1])


@register_flop_formula(torch.ops.visionattn.aggregated_blocked)
def _aggregated_flops(query_shape, key_shape, value_shape, pool_key_shape, pool_value_shape, kernel_size, *args,
                      out_shape=None, **kwargs) -> int:
    # every query's k x k window slots (border slots are masked, not skipped) plus the pooled keys
    batch, height, width, heads, dim = query_shape
    keys = kernel_size * kernel_size + (pool_key_shape[1] if pool_key_shape is not None else 0)
    return 2 * batch * height * width * heads * keys * (dim + value_shape[-1])


@register_flop_formula(torch.ops.visionattn.block_sparse_attn_fwd)
def _bsa_flops(q_shape, k_shape, v_shape, idx_shape, bias_shape, kbias_shape, scale, impl, out_shape=None,
               **kwargs) -> int:
    batch, n_q, t_q, heads, dim = q_shape
    t_k, topk = k_shape[2], idx_shape[-1]
    return 2 * batch * heads * n_q * t_q * topk * t_k * (dim + v_shape[-1])


@register_flop_formula(torch.ops.visionattn.topk_attn_fwd)
def _topk_flops(q_shape, k_shape, v_shape, idx_shape, scale, num_dense, dropout_p, impl, out_shape=None,
                **kwargs) -> int:
    # the listed keys of every query row after the dense ones, every key for the dense rows (class token)
    batch, n_q, heads, dim = q_shape
    pairs = (n_q - num_dense) * idx_shape[-1] + num_dense * k_shape[1]
    return 2 * batch * heads * pairs * (dim + v_shape[-1])


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> Tuple[int, Dict[str, int]]:
    """Multiply-accumulates of ``model(x)`` (eval, no grad) in total and per op type."""
    mode = FlopCounterMode(display=False)
    with torch.no_grad(), opaque_ops(), mode:
        model(x)
    per_op = {str(op): n // 2 for op, n in mode.get_flop_counts().get('Global', {}).items()}
    return mode.get_total_flops() // 2, per_op
