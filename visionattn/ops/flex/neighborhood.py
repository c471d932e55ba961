"""GNA through FlexAttention: the GNA window as a ``mask_mod``, rpb as a ``score_mod``, additional keys/values
appended to the key sequence (every query sees them, without bias).

Tokens are flattened row-major; the mask is built per axis from the oracle's definition (``gna_axis_mask``: window
tables ``[L_i, L_i]``, indexed by each token's coordinates) and the ``BlockMask`` is cached per geometry.
"""
import math
from functools import lru_cache
from typing import Optional, Tuple

import torch

from .._dispatch import register_backend
from ..reference import gna_axis_mask
from . import _flex, flex_attention_call, flex_priority, flex_unsupported

__all__ = ['gna_flex']

_BLOCK = 128


def _coords(flat: torch.Tensor, shape: Tuple[int, ...]):
    out, rem = [], flat
    for i in reversed(range(len(shape))):
        out.append(rem % shape[i])
        rem = rem // shape[i]
    return out[::-1]


@lru_cache(maxsize=64)
def _tables(shape, kernel_size, stride, dilation, is_causal, device: str):
    masks, rels = [], []
    for i in range(len(shape)):
        m, r = gna_axis_mask(shape[i], kernel_size[i], stride[i], dilation[i], is_causal[i], device=device)
        masks.append(m)
        rels.append(r)
    return masks, rels


def _mask_mod(shape, masks, n_tokens: int, n_extra: int):
    def mask_mod(b, h, q_idx, kv_idx):
        kv = torch.clamp(kv_idx, max=n_tokens - 1)
        qc, kc = _coords(q_idx, shape), _coords(kv, shape)
        ok = masks[0][qc[0], kc[0]]
        for i in range(1, len(shape)):
            ok = ok & masks[i][qc[i], kc[i]]
        return (ok | (kv_idx >= n_tokens)) if n_extra else ok
    return mask_mod


@lru_cache(maxsize=32)
def _block_mask(shape, kernel_size, stride, dilation, is_causal, n_extra: int, device: str):
    masks, _ = _tables(shape, kernel_size, stride, dilation, is_causal, device)
    n = math.prod(shape)
    return _flex()[1](_mask_mod(shape, masks, n, n_extra), None, None, n, n + n_extra, device=device,
                      BLOCK_SIZE=_BLOCK)


def gna_flex(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
             additional_values) -> torch.Tensor:
    """GNA (arguments normalized as ``neighborhood_attention`` passes them) through ``flex_attention``."""
    b, heads, d, dv = query.shape[0], query.shape[-2], query.shape[-1], value.shape[-1]
    shape = tuple(query.shape[1:-2])
    n = math.prod(shape)
    ks, st, dil, causal = (tuple(int(x) for x in kernel_size), tuple(int(x) for x in stride),
                           tuple(int(x) for x in dilation), tuple(bool(x) for x in is_causal))
    q = query.reshape(b, n, heads, d).transpose(1, 2)
    k = key.reshape(b, n, heads, d)
    v = value.reshape(b, n, heads, dv)
    n_extra = 0
    if additional_keys is not None:
        n_extra = additional_keys.shape[1]
        k, v = torch.cat([k, additional_keys], dim=1), torch.cat([v, additional_values], dim=1)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    dev = str(query.device)
    block_mask = _block_mask(shape, ks, st, dil, causal, n_extra, dev)
    score_mod = None
    if rpb is not None:
        _, rels = _tables(shape, ks, st, dil, causal, dev)
        flat = rpb.reshape(heads, -1)
        mults = [math.prod(2 * x - 1 for x in ks[i + 1:]) for i in range(len(ks))]

        def score_mod(score, b_idx, h_idx, q_idx, kv_idx):
            kv = torch.clamp(kv_idx, max=n - 1)
            qc, kc = _coords(q_idx, shape), _coords(kv, shape)
            idx = rels[0][qc[0], kc[0]] * mults[0]
            for i in range(1, len(shape)):
                idx = idx + rels[i][qc[i], kc[i]] * mults[i]
            bias = flat[h_idx, idx].to(score.dtype)
            return score + (torch.where(kv_idx < n, bias, torch.zeros_like(bias)) if n_extra else bias)

    out = flex_attention_call(q, k, v, score_mod, block_mask, float(scale))
    return out.transpose(1, 2).reshape(query.shape[:-1] + (dv,))


def _unsupported(query, key, value, rpb=None, additional_keys=None, additional_values=None, **kwargs) -> Optional[str]:
    return flex_unsupported(query, key, value, rpb, additional_keys, additional_values)


# below triton (20) and natten (15) on CUDA, above blocked (10); on CPU below every other backend (forward only)
register_backend('gna', 'flex', gna_flex, priority=2, unsupported=_unsupported, priority_fn=flex_priority(12, 2))
