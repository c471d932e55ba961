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

* ``reference``: dense masked ``N x N`` attention built from the definition (the oracle, O(N^2) memory).
* ``blocked``: pure PyTorch, the ``k * k`` window slots as shifted views of the zero-padded keys and values (no
  unfold copy of ``k * k`` times the keys), memory O(N x (k * k + P)); autograd through plain ops.

Reference: Shi, "TransNeXt: Robust Foveal Visual Perception for Vision Transformers", CVPR 2024, arXiv 2311.17132;
https://github.com/DaiShiResearch/TransNeXt (Apache-2.0), ``classification/attention_native.py``.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from ._dispatch import get_backend, register_backend, use_opaque_ops

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


def _local_mask(h: int, w: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """``[H, W, 1, k * k]`` bool, True where the window slot lies outside the image."""
    r = kernel_size // 2
    ones = F.pad(torch.ones(h, w, device=device), (r, r, r, r))
    slots = [ones[i:i + h, j:j + w] for i in range(kernel_size) for j in range(kernel_size)]
    return (torch.stack(slots, dim=-1) == 0).unsqueeze(-2)


def aggregated_attention_blocked(
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
) -> torch.Tensor:
    """Aggregated attention with window slots as shifted views of the zero-padded keys/values (see module doc)."""
    b, h, w, heads, _ = query.shape
    r = kernel_size // 2
    pad = (0, 0, 0, 0, r, r, r, r)
    kp, vp = F.pad(key, pad), F.pad(value, pad)
    offsets = [(i, j) for i in range(kernel_size) for j in range(kernel_size)]
    q = query * scale if scale != 1. else query
    logits = torch.stack([(q * kp[:, i:i + h, j:j + w]).sum(-1) for i, j in offsets], dim=-1)  # [B, H, W, h, kk]
    if local_bias is not None:
        logits = logits + local_bias
    logits = logits.masked_fill(_local_mask(h, w, kernel_size, query.device), float('-inf'))
    n_local = logits.shape[-1]
    if pool_key is not None:
        pool_logits = torch.einsum('bxyhd,bphd->bxyhp', q, pool_key)
        if pool_bias is not None:
            pool_logits = pool_logits + pool_bias
        logits = torch.cat([logits, pool_logits], dim=-1)
    attn = logits.softmax(dim=-1)
    if dropout_p > 0.:
        attn = F.dropout(attn, dropout_p)
    a_local = attn[..., :n_local]
    if local_weights is not None:
        a_local = local_weights + a_local
    out = None
    for s, (i, j) in enumerate(offsets):
        term = a_local[..., s:s + 1] * vp[:, i:i + h, j:j + w]
        out = term if out is None else out + term
    if pool_key is not None:
        out = out + torch.einsum('bxyhp,bphd->bxyhd', attn[..., n_local:], pool_value)
    return out


def aggregated_attention_reference(
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
) -> torch.Tensor:
    """The oracle: dense ``N x N`` logits masked to each query's zero-padded window, from the definition."""
    b, h, w, heads, d = query.shape
    n = h * w
    r = kernel_size // 2
    dev = query.device
    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing='ij')
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[None, :] - ys[:, None]  # [query, key]
    dx = xs[None, :] - xs[:, None]
    in_win = (dy.abs() <= r) & (dx.abs() <= r)
    slot = ((dy + r) * kernel_size + (dx + r)).clamp(0, kernel_size * kernel_size - 1)
    q = query.reshape(b, n, heads, d).transpose(1, 2)  # [B, h, N, d]
    k = key.reshape(b, n, heads, d).transpose(1, 2)
    v = value.reshape(b, n, heads, -1).transpose(1, 2)
    logits = scale * q @ k.transpose(-1, -2)
    if local_bias is not None:
        logits = logits + local_bias[:, slot]
    logits = logits.masked_fill(~in_win, float('-inf'))
    if pool_key is not None:
        pool_logits = scale * q @ pool_key.permute(0, 2, 3, 1)
        if pool_bias is not None:
            pool_logits = pool_logits + pool_bias.reshape(*pool_bias.shape[:-4], n, heads, -1).transpose(-2, -3)
        logits = torch.cat([logits, pool_logits], dim=-1)
    attn = logits.softmax(dim=-1)
    if dropout_p > 0.:
        attn = F.dropout(attn, dropout_p)
    a_local = attn[..., :n]
    if local_weights is not None:
        lw = local_weights.reshape(*local_weights.shape[:-4], n, heads, -1).transpose(-2, -3)  # [(B,) h, N, kk]
        lw = lw.expand(b, heads, n, lw.shape[-1])
        dense = torch.gather(lw, -1, slot.expand(b, heads, n, n))  # slot weight of every (query, key) pair
        a_local = a_local + dense.masked_fill(~in_win, 0.)
    out = a_local @ v
    if pool_key is not None:
        out = out + attn[..., n:] @ pool_value.transpose(1, 2)
    return out.transpose(1, 2).reshape(b, h, w, heads, -1)


# ---------------------------------------------------------------------------------------------------------------------
# Custom op wrapper of the blocked backend (torch.compile sees one opaque call instead of the window loops)
# ---------------------------------------------------------------------------------------------------------------------

@torch.library.custom_op('visionattn::aggregated_blocked', mutates_args=())
def _aggregated_blocked_op(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        pool_key: Optional[torch.Tensor],
        pool_value: Optional[torch.Tensor],
        kernel_size: int,
        local_bias: Optional[torch.Tensor],
        pool_bias: Optional[torch.Tensor],
        local_weights: Optional[torch.Tensor],
        scale: float,
) -> torch.Tensor:
    with torch.no_grad():
        return aggregated_attention_blocked(
            query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights,
            scale).contiguous()


@_aggregated_blocked_op.register_fake
def _(query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale):
    return query.new_empty(query.shape[:-1] + (value.shape[-1],))


@torch.library.custom_op('visionattn::aggregated_blocked_backward', mutates_args=())
def _aggregated_blocked_backward_op(
        grad_out: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        pool_key: Optional[torch.Tensor],
        pool_value: Optional[torch.Tensor],
        kernel_size: int,
        local_bias: Optional[torch.Tensor],
        pool_bias: Optional[torch.Tensor],
        local_weights: Optional[torch.Tensor],
        scale: float,
) -> List[torch.Tensor]:
    """Gradients of every tensor input by recomputation (empty tensors for absent inputs)."""
    inputs = [query, key, value, pool_key, pool_value, local_bias, pool_bias, local_weights]
    present = [i for i, x in enumerate(inputs) if x is not None]

    def fn(*xs):
        full = list(inputs)
        for i, x in zip(present, xs):
            full[i] = x
        q, k, v, pk, pv, lb, pb, lw = full
        return aggregated_attention_blocked(q, k, v, pk, pv, kernel_size, lb, pb, lw, scale)

    # the op runs below the autograd dispatch key, so differentiate with torch.func (its own transform layer)
    _, vjp_fn = torch.func.vjp(fn, *[inputs[i] for i in present])
    grads = iter(vjp_fn(grad_out))
    return [next(grads) if x is not None else grad_out.new_empty(0) for x in inputs]


@_aggregated_blocked_backward_op.register_fake
def _(grad_out, query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale):
    xs = [query, key, value, pool_key, pool_value, local_bias, pool_bias, local_weights]
    return [grad_out.new_empty(0) if x is None else torch.empty_like(x) for x in xs]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*[x for x in inputs if isinstance(x, torch.Tensor)])
    ctx.has = [isinstance(x, torch.Tensor) for x in inputs]
    ctx.args = inputs


def _backward(ctx, grad_out):
    saved = iter(ctx.saved_tensors)
    args = [next(saved) if h else a for h, a in zip(ctx.has, ctx.args)]
    q, k, v, pk, pv, ks, lb, pb, lw, scale = args
    dq, dk, dv, dpk, dpv, dlb, dpb, dlw = _aggregated_blocked_backward_op(
        grad_out.contiguous(), q, k, v, pk, pv, ks, lb, pb, lw, scale)

    def keep(g, x):
        return g if x is not None else None
    return (dq, dk, dv, keep(dpk, pk), keep(dpv, pv), None, keep(dlb, lb), keep(dpb, pb), keep(dlw, lw), None)


_aggregated_blocked_op.register_autograd(_backward, setup_context=_setup_context)


def _blocked_backend(query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights,
                     scale, dropout_p):
    if use_opaque_ops() and dropout_p == 0.:
        return _aggregated_blocked_op(
            query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale)
    return aggregated_attention_blocked(
        query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale, dropout_p)


register_backend('aggregated', 'reference', aggregated_attention_reference, priority=0, unsupported=None)
register_backend('aggregated', 'blocked', _blocked_backend, priority=10, unsupported=None)


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
