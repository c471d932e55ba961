"""Generalized neighborhood attention (GNA): ``na1d``, ``na2d``, ``na3d``.

Semantics are NATTEN's (>= 0.20) generalized neighborhood attention: per-axis kernel size (even or odd), stride
(stride groups share the window of their leader, the right-hand centre query), dilation (dilation groups attend
within themselves) and causality; windows are clamped inward at the borders, never padded. Added on top of what
NATTEN keeps: relative positional bias (``rpb`` of shape ``[heads, 2k_0 - 1, ...]`` as in NAT/DiNAT checkpoints,
indexed per axis by ``(key - query) / dilation + k - 1`` and added after scaling) and a CPU path.

Layout is heads-last like NATTEN: ``[B, *spatial, heads, head_dim]``.

Backends (``backend='auto'`` picks the best that can run, see ``visionattn.ops._dispatch``):

* ``reference`` (``visionattn.ops.reference.neighborhood``): dense masked attention, O(tokens^2) memory; the oracle.
* ``blocked`` (``visionattn.ops.blocked.neighborhood``): pure PyTorch; query tiles with their key halo batched through
  ``F.scaled_dot_product_attention``, memory O(tokens x window); runs everywhere, autograd through plain torch ops.
* ``triton`` (``visionattn.ops.triton.neighborhood``): fused forward/backward kernels, CUDA tensors only.
* ``cpu`` (``visionattn.ops.cpu.neighborhood``, sources ``kernels/cpu/gna.cpp``): fused C++ forward/backward
  kernels, CPU tensors; above ``blocked`` where measured faster; unavailable (with the reason) when the extension cannot
  be built.
* ``natten`` (``visionattn.ops.natten.neighborhood``): NATTEN's ``na1d/na2d/na3d`` when installed and able to run the
  call (no rpb; on CPU only its Flex path, forward only); ranked below ``blocked`` on CPU and below ``triton`` on CUDA.

This module holds the public functions, the argument checks and the backend registration.

Reference: Hassani et al., "Generalized Neighborhood Attention: Multi-dimensional Sparse Attention at the Speed of
Light", arXiv 2504.16922; NATTEN (https://github.com/SHI-Labs/NATTEN, MIT).
"""
from typing import Optional

import torch
from timm.layers import register_notrace_function

from ._args import BoolOrTuple, IntOrTuple, gna_axes
from ._dispatch import get_backend, register_backend
from .blocked.neighborhood import gna_blocked, gna_blocked_backend
from .natten.neighborhood import natten_backend, natten_priority, natten_unsupported
from .reference.neighborhood import gna_reference

__all__ = ['na1d', 'na2d', 'na3d', 'neighborhood_attention', 'gna_blocked']


# ---------------------------------------------------------------------------------------------------------------------
# Argument handling
# ---------------------------------------------------------------------------------------------------------------------

def _check_and_normalize(
        na_dim: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: IntOrTuple,
        stride: IntOrTuple,
        dilation: IntOrTuple,
        is_causal: BoolOrTuple,
        rpb: Optional[torch.Tensor],
        scale: Optional[float],
        additional_keys: Optional[torch.Tensor],
        additional_values: Optional[torch.Tensor],
):
    """Validate the call; return per-axis tuples and the float scale. Bad input raises ValueError."""
    if query.dim() != na_dim + 3:
        raise ValueError(
            f'na{na_dim}d expects query of shape [B, {"*" * 0}{na_dim} spatial axes, heads, head_dim] '
            f'({na_dim + 3}-D), got {tuple(query.shape)}')
    if key.shape != query.shape:
        raise ValueError(f'key shape {tuple(key.shape)} must equal query shape {tuple(query.shape)}')
    if value.shape[:-1] != query.shape[:-1]:
        raise ValueError(
            f'value shape {tuple(value.shape)} must match query shape {tuple(query.shape)} except the last axis')
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f'query, key, value dtypes differ: {query.dtype}, {key.dtype}, {value.dtype}')
    if key.device != query.device or value.device != query.device:
        raise ValueError(f'query, key, value devices differ: {query.device}, {key.device}, {value.device}')
    kernel_size, stride, dilation, is_causal = gna_axes(na_dim, kernel_size, stride, dilation, is_causal)
    shape = tuple(query.shape[1:-2])
    for i in range(na_dim):
        k, s, d, size = kernel_size[i], stride[i], dilation[i], shape[i]
        if k < 1 or d < 1 or s < 1:
            raise ValueError(f'axis {i}: kernel_size, stride, dilation must be >= 1, got {k}, {s}, {d}')
        if s > k:
            raise ValueError(f'axis {i}: stride {s} must not exceed kernel_size {k}')
        if k * d > size:
            raise ValueError(
                f'axis {i}: input size {size} is smaller than kernel_size * dilation = {k} * {d} = {k * d} '
                f'(query shape {tuple(query.shape)})')
    heads, dim = query.shape[-2], query.shape[-1]
    if rpb is not None:
        expect = (heads,) + tuple(2 * k - 1 for k in kernel_size)
        if tuple(rpb.shape) != expect:
            raise ValueError(f'rpb must have shape [heads, 2k-1 per axis] = {list(expect)}, got {list(rpb.shape)}')
        if rpb.device != query.device:
            raise ValueError(f'rpb is on {rpb.device}, query on {query.device}')
    if (additional_keys is None) != (additional_values is None):
        raise ValueError('additional_keys and additional_values must be given together')
    if additional_keys is not None:
        b = query.shape[0]
        if additional_keys.dim() != 4 or additional_keys.shape[0] != b or additional_keys.shape[2:] != (heads, dim):
            raise ValueError(
                f'additional_keys must have shape [B, n_extra, heads, head_dim] = [{b}, n, {heads}, {dim}], '
                f'got {list(additional_keys.shape)}')
        expect_v = (b, additional_keys.shape[1], heads, value.shape[-1])
        if tuple(additional_values.shape) != expect_v:
            raise ValueError(f'additional_values must have shape {list(expect_v)}, got {list(additional_values.shape)}')
        if additional_keys.dtype != query.dtype or additional_values.dtype != query.dtype:
            raise ValueError('additional_keys/values must have the dtype of query')
    scale = float(dim ** -0.5 if scale is None else scale)
    return kernel_size, stride, dilation, is_causal, scale


# ---------------------------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------------------------

def _triton_backend(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
                    additional_values):
    from .triton.neighborhood import gna_triton
    return gna_triton(
        query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys, additional_values)


def _triton_unsupported(query, value, rpb=None, **kwargs) -> Optional[str]:
    if not query.is_cuda:
        return f'query is on {query.device}, the Triton kernels need CUDA'
    try:
        from .triton.neighborhood import gna_triton_unsupported
    except ImportError as e:  # triton missing or broken
        return f'triton unavailable: {e}'
    return gna_triton_unsupported(query, value, rpb=rpb)


register_backend('gna', 'reference', gna_reference, priority=0, unsupported=None)
register_backend('gna', 'blocked', gna_blocked_backend, priority=10, unsupported=None)
register_backend('gna', 'triton', _triton_backend, priority=20, unsupported=_triton_unsupported)
register_backend('gna', 'natten', natten_backend, priority=5, unsupported=natten_unsupported,
                 priority_fn=natten_priority)
from .cpu import neighborhood as _cpu_neighborhood  # noqa: E402,F401  (registers backend 'cpu': fused C++ kernels)

# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------

def neighborhood_attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        rpb: Optional[torch.Tensor] = None,
        scale: Optional[float] = None,
        additional_keys: Optional[torch.Tensor] = None,
        additional_values: Optional[torch.Tensor] = None,
        backend: str = 'auto',
) -> torch.Tensor:
    """Generalized neighborhood attention over the spatial axes of ``query`` (rank 1, 2 or 3 or more).

    Args:
        query: ``[B, *spatial, heads, head_dim]``.
        key: same shape as ``query``.
        value: ``[B, *spatial, heads, head_dim_v]``.
        kernel_size: window size per axis (int or tuple), ``kernel_size * dilation <= size`` on each axis.
        stride: stride groups per axis, ``1 <= stride <= kernel_size`` (``stride == kernel_size``: blocked attention).
        dilation: dilation per axis.
        is_causal: causal masking per axis.
        rpb: relative positional bias ``[heads, 2k_0 - 1, ...]``, added to the scaled logits.
        scale: logit scale, default ``head_dim ** -0.5``.
        additional_keys: ``[B, n_extra, heads, head_dim]`` keys every query attends to as well (same softmax).
        additional_values: ``[B, n_extra, heads, head_dim_v]``.
        backend: ``'auto'``, ``'reference'``, ``'blocked'``, ``'triton'`` or ``'natten'`` (NATTEN >= 0.20 when
            installed: no rpb, no gradients on CPU).

    Returns:
        ``[B, *spatial, heads, head_dim_v]``.
    """
    na_dim = query.dim() - 3
    if na_dim < 1:
        raise ValueError(f'query must be [B, *spatial, heads, head_dim] with >= 1 spatial axis, got {query.shape}')
    kernel_size, stride, dilation, is_causal, scale = _check_and_normalize(
        na_dim, query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
        additional_values)
    call = {
        'query': query, 'key': key, 'value': value, 'kernel_size': kernel_size, 'stride': stride,
        'dilation': dilation, 'is_causal': is_causal, 'rpb': rpb, 'scale': scale,
        'additional_keys': additional_keys, 'additional_values': additional_values}
    fn = get_backend('gna', backend, **call)
    return fn(**call)


def _na_nd(na_dim: int, doc: str):
    """The public ``na{na_dim}d``: ``neighborhood_attention`` (its signature) with the rank of ``query`` checked."""
    def na(query: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if query.dim() != na_dim + 3:
            raise ValueError(
                f'na{na_dim}d expects query [B, {na_dim} spatial axes, heads, head_dim] ({na_dim + 3}-D), '
                f'got shape {tuple(query.shape)}')
        return neighborhood_attention(query, *args, **kwargs)

    na.__name__ = na.__qualname__ = f'na{na_dim}d'
    na.__doc__ = doc
    na.__wrapped__ = neighborhood_attention  # inspect.signature / help show the full signature
    return register_notrace_function(na)


na1d = _na_nd(1, """1-D GNA over ``[B, L, heads, head_dim]``; see ``neighborhood_attention``.""")
na2d = _na_nd(2, """2-D GNA over ``[B, H, W, heads, head_dim]`` (rpb ``[heads, 2k_h - 1, 2k_w - 1]``, height first).""")
na3d = _na_nd(3, """3-D GNA over ``[B, T, H, W, heads, head_dim]``; see ``neighborhood_attention``.""")
from .flex import neighborhood as _flex_neighborhood  # noqa: E402,F401  (registers the 'flex' backend)
