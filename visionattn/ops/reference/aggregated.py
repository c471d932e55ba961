"""Reference (oracle) of aggregated attention (TransNeXt): dense ``N x N`` logits masked to each query's window."""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['aggregated_attention_reference']


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
