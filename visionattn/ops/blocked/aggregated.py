"""Blocked aggregated attention in pure PyTorch (backend ``blocked`` of ``visionattn.ops.aggregated``).

The ``k * k`` window slots are shifted views of the zero-padded keys and values (no unfold copy of ``k * k`` times the
keys), memory O(N x (k * k + P)); autograd through plain ops. Registered as the custom op
``visionattn::aggregated_blocked`` for ``torch.compile`` and FLOP counting.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F

from .._dispatch import use_opaque_ops

__all__ = ['aggregated_attention_blocked', 'aggregated_blocked_backend']


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


def aggregated_blocked_backend(query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias,
                               local_weights, scale, dropout_p):
    if use_opaque_ops() and dropout_p == 0.:
        return _aggregated_blocked_op(
            query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale)
    return aggregated_attention_blocked(
        query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale, dropout_p)

