"""Aggregated attention (TransNeXt): a zero-padded local window and pooled keys under one softmax.

For every query ``n`` of a ``H x W`` map (heads-last layout ``[B, H, W, heads, head_dim]``), the logits are

* local: ``scale * q_n . k_m + local_bias[h, j]`` for the ``k x k`` window slots ``j`` (row-major, centred on ``n``),
  where ``m = n + offset_j``. Slots outside the image are excluded from the softmax (zero padding with a padding
  mask, as TransNeXt's ``nn.Unfold(padding=k // 2)`` plus ``masked_fill(-inf)``): windows are NOT clamped inward
  at the borders as in NATTEN / ``visionattn.ops.na2d``, so border queries see fewer keys (4 in a corner for 3x3);
* pooled: ``scale * q_n . pool_key_p + pool_bias[n, h, p]`` for the ``P`` extra keys shared by every query,

and one softmax runs over the ``k * k + P`` logits. ``local_weights[n, h, j]`` (TransNeXt's learnable tokens,
``q_hat @ learnable_tokens + learnable_bias``) are added to the local probabilities after the softmax, so

``out_n = sum_j (a_nj + local_weights_nj) * v_{n + offset_j} + sum_p a_np * pool_value_p``

with out-of-image values zero (their terms vanish). ``visionattn.ops.na2d`` with ``additional_keys`` computes the
same softmax for interior queries only (it clamps windows at borders and has no per-query bias on the extra keys
and no post-softmax local weights), hence this op.

Backends (``backend='auto'`` picks ``blocked``):

* ``reference`` (``visionattn.ops.reference.aggregated``): dense masked ``N x N`` attention built from the
  definition (the oracle, O(N^2) memory). Under ``torch.export`` (every export runs this backend) it runs
  ``aggregated_gather`` instead: the window slots as one index Gather of the zero-padded keys and values, linear in
  tokens, dynamic H and W, standard ONNX ops (equal to the oracle to 1e-10 in float64).
* ``blocked`` (``visionattn.ops.blocked.aggregated``): pure PyTorch, the ``k * k`` window slots as shifted views of
  the zero-padded keys and values (no unfold copy of ``k * k`` times the keys), memory O(N x (k * k + P)); autograd
  through plain ops.

Reference: Shi, "TransNeXt: Robust Foveal Visual Perception for Vision Transformers", CVPR 2024, arXiv 2311.17132;
https://github.com/DaiShiResearch/TransNeXt (Apache-2.0), ``classification/attention_native.py``.
"""
from typing import Optional

import torch
from timm.layers import register_notrace_function

from ._dispatch import get_backend, register_backend
from .blocked.aggregated import aggregated_attention_blocked, aggregated_blocked_backend
from .reference.aggregated import aggregated_attention_reference

__all__ = ['aggregated_attention', 'aggregated_attention_reference', 'aggregated_attention_blocked']


def _check(query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights):
    if query.dim() != 5:
        raise ValueError(f'aggregated_attention expects query [B, H, W, heads, head_dim], got {tuple(query.shape)}')
    if key.shape != query.shape:
        raise ValueError(f'key shape {tuple(key.shape)} must equal query shape {tuple(query.shape)}')
    if value.shape[:-1] != query.shape[:-1]:
        raise ValueError(f'value shape {tuple(value.shape)} must match query {tuple(query.shape)} but the last axis')
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be an odd int >= 1, got {kernel_size}')
    b, h, w, heads, dim = query.shape
    kk = kernel_size * kernel_size
    if (pool_key is None) != (pool_value is None):
        raise ValueError('pool_key and pool_value must be given together')
    if pool_key is not None:
        if pool_key.dim() != 4 or pool_key.shape[0] != b or pool_key.shape[2:] != (heads, dim):
            raise ValueError(
                f'pool_key must be [B, P, heads, head_dim] = [{b}, P, {heads}, {dim}], got {list(pool_key.shape)}')
        if tuple(pool_value.shape) != (b, pool_key.shape[1], heads, value.shape[-1]):
            raise ValueError(f'pool_value shape {list(pool_value.shape)} does not match pool_key / value')
    elif pool_bias is not None:
        raise ValueError('pool_bias given without pool keys')
    if local_bias is not None and tuple(local_bias.shape) != (heads, kk):
        raise ValueError(f'local_bias must be [heads, k * k] = [{heads}, {kk}], got {list(local_bias.shape)}')
    if pool_bias is not None and pool_bias.shape[-4:] != (h, w, heads, pool_key.shape[1]):
        raise ValueError(
            f'pool_bias must be [(B,) H, W, heads, P] = [{h}, {w}, {heads}, {pool_key.shape[1]}], '
            f'got {list(pool_bias.shape)}')
    if local_weights is not None and local_weights.shape[-4:] != (h, w, heads, kk):
        raise ValueError(
            f'local_weights must be [(B,) H, W, heads, k * k] = [{h}, {w}, {heads}, {kk}], '
            f'got {list(local_weights.shape)}')


register_backend('aggregated', 'reference', aggregated_attention_reference, priority=0, unsupported=None)
register_backend('aggregated', 'blocked', aggregated_blocked_backend, priority=10, unsupported=None)


@register_notrace_function
def aggregated_attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        pool_key: Optional[torch.Tensor] = None,
        pool_value: Optional[torch.Tensor] = None,
        kernel_size: int = 3,
        local_bias: Optional[torch.Tensor] = None,
        pool_bias: Optional[torch.Tensor] = None,
        local_weights: Optional[torch.Tensor] = None,
        scale: float = 1.,
        dropout_p: float = 0.,
        backend: str = 'auto',
) -> torch.Tensor:
    """Aggregated attention: zero-padded ``k x k`` window + pooled keys in one softmax (TransNeXt).

    Args:
        query: ``[B, H, W, heads, head_dim]``.
        key: same shape as ``query``.
        value: ``[B, H, W, heads, head_dim_v]``.
        pool_key: ``[B, P, heads, head_dim]`` keys every query attends to as well (same softmax), or None.
        pool_value: ``[B, P, heads, head_dim_v]``.
        kernel_size: odd window size; slots outside the image are masked out (not clamped inward).
        local_bias: ``[heads, k * k]`` bias of the window slots (row-major), added to the scaled logits.
        pool_bias: ``[(B,) H, W, heads, P]`` per-query bias of the pooled keys.
        local_weights: ``[(B,) H, W, heads, k * k]`` added to the local probabilities after the softmax.
        scale: logit scale (TransNeXt folds its scale into the queries: 1).
        dropout_p: dropout on the attention probabilities (before ``local_weights`` are added), for training.
        backend: ``'auto'``, ``'reference'`` or ``'blocked'``.

    Returns:
        ``[B, H, W, heads, head_dim_v]``.
    """
    _check(query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights)
    call = dict(
        query=query, key=key, value=value, pool_key=pool_key, pool_value=pool_value, kernel_size=kernel_size,
        local_bias=local_bias, pool_bias=pool_bias, local_weights=local_weights, scale=float(scale),
        dropout_p=float(dropout_p))
    return get_backend('aggregated', backend, **call)(**call)
