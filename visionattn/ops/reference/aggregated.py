"""Reference (oracle) of aggregated attention (TransNeXt): dense ``N x N`` logits masked to each query's window.

``aggregated_gather`` computes the same result with each query's ``k * k`` window slots gathered from the zero-padded
keys and values by one index tensor built from the (possibly symbolic) map size, O(tokens x (k * k + P)) memory: the
formulation the reference backend exports (under ``torch.export``), standard ONNX ops only (Pad, Gather, Mul,
ReduceSum, Softmax, MatMul); tested against ``aggregated_attention_reference`` in float64.
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['aggregated_attention_reference', 'aggregated_gather']


def _is_exporting() -> bool:
    return not torch.jit.is_scripting() and torch.compiler.is_exporting()


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
    """The oracle: dense ``N x N`` logits masked to each query's zero-padded window, from the definition.

    Under ``torch.export`` it runs ``aggregated_gather`` (the same result, no ``[N, N]`` logits).
    """
    if _is_exporting():
        return aggregated_gather(
            query, key, value, pool_key, pool_value, kernel_size, local_bias, pool_bias, local_weights, scale,
            dropout_p)
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


def aggregated_gather(
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
    """Aggregated attention with the window slots gathered from the zero-padded keys/values (see module doc).

    ``aggregated_attention_reference``'s arguments and result; no shape-dependent Python control flow, so it exports
    with dynamic H and W. Slot ``j`` of query ``(y, x)`` is position ``(y + j // k, x + j % k)`` of the map padded
    by ``k // 2``: one Gather of ``k * k`` rows per query from the flattened padded keys (and values), in head-major
    layout (fewer transposes in ONNX than the heads-last einsums: 0.7x the time of a heads-last form in onnxruntime).
    """
    h, w = query.shape[1:3]
    k = kernel_size
    r = k // 2
    kk = k * k
    dev = query.device
    taps = torch.arange(k, device=dev)
    rows = torch.arange(h, device=dev)[:, None] + taps  # [H, k] padded rows of each query's window
    cols = torch.arange(w, device=dev)[:, None] + taps  # [W, k]
    index = (rows[:, None, :, None] * (w + 2 * r) + cols[None, :, None, :]).reshape(-1)  # flat padded positions
    outside = ((rows < r) | (rows >= h + r))[:, None, :, None] | ((cols < r) | (cols >= w + r))[None, :, None, :]
    # head-major [B, heads, N, D]: the pooled terms are plain MatMuls, the window terms Mul + ReduceSum
    q = query.flatten(1, 2).transpose(1, 2)
    q = q * scale if scale != 1. else q
    pad = (0, 0, r, r, r, r)
    kg = F.pad(key.permute(0, 3, 1, 2, 4), pad).flatten(2, 3).index_select(2, index).unflatten(2, (-1, kk))
    vg = F.pad(value.permute(0, 3, 1, 2, 4), pad).flatten(2, 3).index_select(2, index).unflatten(2, (-1, kk))
    logits = (q.unsqueeze(3) * kg).sum(-1)  # [B, heads, N, kk]
    if local_bias is not None:
        logits = logits + local_bias.unsqueeze(1)
    logits = logits.masked_fill(outside.reshape(-1, kk), float('-inf'))
    if pool_key is not None:
        pool_logits = q @ pool_key.permute(0, 2, 3, 1)  # [B, heads, N, P]
        if pool_bias is not None:
            pool_logits = pool_logits + pool_bias.flatten(-4, -3).transpose(-2, -3)
        logits = torch.cat([logits, pool_logits], dim=-1)
    attn = logits.softmax(dim=-1)
    if dropout_p > 0.:
        attn = F.dropout(attn, dropout_p)
    a_local = attn[..., :kk]
    if local_weights is not None:
        a_local = a_local + local_weights.flatten(-4, -3).transpose(-2, -3)
    out = (a_local.unsqueeze(-1) * vg).sum(3)  # [B, heads, N, Dv]
    if pool_key is not None:
        out = out + attn[..., kk:] @ pool_value.transpose(1, 2)
    return out.transpose(1, 2).unflatten(1, (h, w))
