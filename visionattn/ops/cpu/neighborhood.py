"""Backend ``cpu`` of GNA: the fused C++ kernels of ``kernels/cpu/gna.cpp`` as custom ops with autograd.

``visionattn::gna_cpu_fwd`` / ``visionattn::gna_cpu_bwd`` take the canonical 3-D layout ``[B, L0, L1, L2, heads, D]``
(1-D and 2-D calls get leading axes of length 1 with kernel size 1), fp32 or fp64 tensors, contiguous or, for
query/key/value, token-strided (views of one qkv projection are read in place); they validate every argument and raise
ValueError before anything reaches the kernel. ``gna_cpu`` is the backend: it canonicalizes the layout, makes inputs
the kernel cannot read in place contiguous and computes fp16/bf16 inputs in fp32. Semantics: NATTEN's GNA plus rpb and
additional keys/values, exactly as ``visionattn.ops.reference.gna_reference``.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch

from .._custom_op import custom_op
from .._dispatch import counting_ops
from . import _ext

__all__ = ['gna_cpu', 'gna_cpu_unsupported']

_DTYPES = (torch.float32, torch.float64)


_STRIDED = dict.fromkeys(('query', 'key', 'value'), ' or token-strided (dense heads and channels)')


def _token_strided(t: torch.Tensor) -> bool:
    """Whether the kernel reads ``t`` [B, L0, L1, L2, heads, D] in place: heads and channels dense, all tokens at one
    stride (spatial axes of size 1 aside), e.g. q/k/v unbound from one qkv projection (mirrors ``layout_of``)."""
    h, d = t.shape[4], t.shape[5]
    if (d > 1 and t.stride(5) != 1) or (h > 1 and t.stride(4) != d):
        return False
    st, inner = None, 1
    for i in (3, 2, 1):
        if t.shape[i] > 1:
            if t.stride(i) % inner or (st is not None and t.stride(i) != st * inner):
                return False
            st = t.stride(i) // inner
        inner *= t.shape[i]
    return st is None or st >= h * d


def _check(q, k, v, kernel_size, stride, dilation, is_causal, rpb, scale, ak, av, name: str) -> None:
    """Everything the kernel relies on; ValueError naming the problem."""
    if q.dim() != 6:
        raise ValueError(f'{name}: query must be [B, L0, L1, L2, heads, D] (6-D), got {tuple(q.shape)}')
    if k.shape != q.shape or v.dim() != 6 or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f'{name}: shapes differ: query {tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}')
    tensors = {'query': q, 'key': k, 'value': v, 'rpb': rpb, 'additional_keys': ak, 'additional_values': av}
    for tname, t in tensors.items():
        if t is None:
            continue
        if t.device.type != 'cpu':
            raise ValueError(f'{name}: {tname} is on {t.device}, the kernel needs CPU tensors')
        if t.dtype != q.dtype or q.dtype not in _DTYPES:
            raise ValueError(f'{name}: {tname} has dtype {t.dtype}, expected {q.dtype} (fp32 or fp64)')
        if not (t.is_contiguous() or (tname in _STRIDED and t.dim() == 6 and _token_strided(t))):
            raise ValueError(f'{name}: {tname} must be contiguous{_STRIDED.get(tname, "")}, got strides {t.stride()} '
                             f'for shape {tuple(t.shape)}')
    for arg, vals in (('kernel_size', kernel_size), ('stride', stride), ('dilation', dilation),
                      ('is_causal', is_causal)):
        if len(vals) != 3:  # the op schema makes them int lists
            raise ValueError(f'{name}: {arg} must have 3 entries, got {list(vals)}')
    for i in range(3):
        ks, st, dil, size = kernel_size[i], stride[i], dilation[i], q.shape[1 + i]
        if ks < 1 or st < 1 or dil < 1 or st > ks or ks * dil > size:
            raise ValueError(
                f'{name}: axis {i}: need 1 <= stride <= kernel_size and kernel_size * dilation <= size, got '
                f'kernel_size {ks}, stride {st}, dilation {dil}, size {size}')
    heads = q.shape[4]
    if rpb is not None and tuple(rpb.shape) != (heads,) + tuple(2 * x - 1 for x in kernel_size):
        raise ValueError(f'{name}: rpb must have shape {[heads] + [2 * x - 1 for x in kernel_size]}, got '
                         f'{list(rpb.shape)}')
    if (ak is None) != (av is None):
        raise ValueError(f'{name}: additional_keys and additional_values must be given together')
    if ak is not None:
        b, d, dv = q.shape[0], q.shape[5], v.shape[5]
        if ak.dim() != 4 or (ak.shape[0], ak.shape[2], ak.shape[3]) != (b, heads, d) or \
                tuple(av.shape) != (b, ak.shape[1], heads, dv):
            raise ValueError(f'{name}: additional_keys/values must be [{b}, n, {heads}, {d}] / [{b}, n, {heads}, {dv}],'
                             f' got {list(ak.shape)} / {list(av.shape)}')
    if math.prod(q.shape[1:5]) * max(q.shape[5], v.shape[5]) >= 2 ** 31:
        raise ValueError(f'{name}: one batch entry must hold < 2^31 elements (the kernel\'s 32-bit lane offsets), got '
                         f'query {tuple(q.shape)}, value {tuple(v.shape)}: split the spatial map or the heads')
    if not math.isfinite(scale):
        raise ValueError(f'{name}: scale must be finite, got {scale}')


def _ensure_built() -> None:
    if not _ext.load():
        raise RuntimeError(_ext.unavailable_reason())


def _fwd(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: List[int],
        stride: List[int],
        dilation: List[int],
        is_causal: List[int],
        rpb: Optional[torch.Tensor],
        scale: float,
        additional_keys: Optional[torch.Tensor],
        additional_values: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused GNA forward on the canonical layout: ``(out [B, L0, L1, L2, heads, Dv], lse [B, heads, L0 * L1 * L2])``."""
    _check(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
           additional_values, 'gna_cpu_fwd')
    _ensure_built()
    return torch.ops.visionattn_cpu.gna_fwd(
        query, key, value, kernel_size, stride, dilation, [int(c) for c in is_causal], rpb, scale, additional_keys,
        additional_values)


def _fwd_fake(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
              additional_values):
    b, heads = query.shape[0], query.shape[4]
    out = query.new_empty(query.shape[:-1] + (value.shape[-1],))
    return out, query.new_empty((b, heads, math.prod(query.shape[1:4])))


def _bwd(
        grad_out: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        kernel_size: List[int],
        stride: List[int],
        dilation: List[int],
        is_causal: List[int],
        rpb: Optional[torch.Tensor],
        scale: float,
        additional_keys: Optional[torch.Tensor],
        additional_values: Optional[torch.Tensor],
) -> List[torch.Tensor]:
    """Gradients ``[dq, dk, dv, drpb, dak, dav]`` (empty tensors for absent inputs), recomputed from ``lse``."""
    _check(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
           additional_values, 'gna_cpu_bwd')
    b, heads, n = query.shape[0], query.shape[4], math.prod(query.shape[1:4])
    for tname, t, shape in (('grad_out', grad_out, out.shape), ('out', out, query.shape[:-1] + value.shape[-1:]),
                            ('lse', lse, (b, heads, n))):
        if tuple(t.shape) != tuple(shape) or t.dtype != query.dtype or not t.is_contiguous() or t.device.type != 'cpu':
            raise ValueError(f'gna_cpu_bwd: {tname} must be a contiguous CPU {query.dtype} tensor of shape '
                             f'{list(shape)}, got {t.dtype} {list(t.shape)} (contiguous: {t.is_contiguous()})')
    _ensure_built()
    return list(torch.ops.visionattn_cpu.gna_bwd(
        grad_out, query, key, value, out, lse, kernel_size, stride, dilation, [int(c) for c in is_causal], rpb, scale,
        additional_keys, additional_values))


def _bwd_fake(grad_out, query, key, value, out, lse, kernel_size, stride, dilation, is_causal, rpb, scale,
              additional_keys, additional_values):
    xs = [query, key, value, rpb, additional_keys, additional_values]
    return [query.new_empty(0) if x is None else x.new_empty(x.shape) for x in xs]  # contiguous, as the kernel's


# the backward op gets (grad_out, q, k, v, out, lse, the rest of the forward's arguments)
gna_cpu_fwd = custom_op(
    'visionattn::gna_cpu_fwd', _fwd, _fwd_fake, backward=_bwd, backward_name='visionattn::gna_cpu_bwd',
    backward_fake=_bwd_fake, backward_inputs=lambda inputs, output: (*inputs[:3], *output, *inputs[3:]),
    grad_inputs=('query', 'key', 'value', 'rpb', 'additional_keys', 'additional_values'))
gna_cpu_bwd = torch.ops.visionattn.gna_cpu_bwd


def gna_cpu(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        dilation: Sequence[int],
        is_causal: Sequence[bool],
        rpb: Optional[torch.Tensor] = None,
        scale: Optional[float] = None,
        additional_keys: Optional[torch.Tensor] = None,
        additional_values: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """GNA of rank 1-3 through the fused CPU kernels; layout ``[B, *spatial, heads, D]``, per-axis tuples."""
    n = query.dim() - 3
    if n not in (1, 2, 3):
        raise ValueError(f'gna_cpu runs 1-3 spatial axes, got query of shape {tuple(query.shape)}')
    if rpb is not None and rpb.dim() != n + 1:
        raise ValueError(f'rpb must be [heads, 2k-1 per axis] ({n + 1}-D), got {tuple(rpb.shape)}')
    pad = 3 - n
    b, heads, dim = query.shape[0], query.shape[-2], query.shape[-1]
    spatial = (1,) * pad + tuple(query.shape[1:-2])
    scale = float(dim ** -0.5 if scale is None else scale)
    dtype = query.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def prep(x, shape, strided=False):
        if x is None:
            return None
        x = x.to(work).reshape(shape)
        return x if strided and _token_strided(x) else x.contiguous()

    q = prep(query, (b,) + spatial + (heads, dim), True)  # views of one qkv projection are read in place
    k = prep(key, (b,) + spatial + (heads, key.shape[-1]), True)
    v = prep(value, (b,) + spatial + (heads, value.shape[-1]), True)
    r = prep(rpb, (rpb.shape[0],) + (1,) * pad + tuple(rpb.shape[1:])) if rpb is not None else None
    ak = prep(additional_keys, additional_keys.shape) if additional_keys is not None else None
    av = prep(additional_values, additional_values.shape) if additional_values is not None else None
    out, _ = gna_cpu_fwd(
        q, k, v, [1] * pad + list(kernel_size), [1] * pad + list(stride), [1] * pad + list(dilation),
        [0] * pad + [int(bool(c)) for c in is_causal], r, scale, ak, av)
    return out.reshape(query.shape[:-1] + (value.shape[-1],)).to(dtype)


def gna_cpu_unsupported(query, value, rpb=None, **kwargs) -> Optional[str]:
    """Why backend ``cpu`` cannot run this call, or None."""
    if query.device.type != 'cpu':
        return f'query is on {query.device}, the fused CPU kernels need CPU tensors'
    if query.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return f'dtype {query.dtype} not supported (fp32, fp64; fp16/bf16 computed in fp32)'
    if not 1 <= query.dim() - 3 <= 3:
        return f'{query.dim() - 3} spatial axes: the fused CPU kernels run 1-3'
    if counting_ops():
        return 'FLOP counting (opaque_ops): the blocked custom op carries the formula'
    return _ext.unavailable_reason()


def _needs_grad(*xs) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def _cpu_priority(query, key=None, value=None, rpb=None, additional_keys=None, additional_values=None,
                  **kwargs) -> int:
    # Measured side by side with `blocked` (1 thread, under load; benchmarks/gna_cpu_misses_1thread_2026-12-02.md):
    # the forward is 2.4-5x faster on every issue config (56x56 k7, 28x28 k7 dil 2, 3-D k(3,7,7), 1-D 4096 k127,
    # k8 s4, NAT with rpb) and forward+backward 2.2-4.1x (28x28 dil 2 with gradients included: 2.7x), so dilated,
    # strided and long 1-D windows rank above `blocked` too. The one loss left: the backward threads over
    # (batch, head) (race-free dK/dV), so fewer pairs than threads idle them.
    if _needs_grad(query, key, value, rpb, additional_keys, additional_values):
        if not torch.compiler.is_compiling() and query.shape[0] * query.shape[-2] < torch.get_num_threads():
            return 8
    return 12


def _cpu_backend(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
                 additional_values):
    return gna_cpu(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
                   additional_values)


def _register() -> None:
    from .._dispatch import register_backend
    register_backend('gna', 'cpu', _cpu_backend, priority=12, unsupported=gna_cpu_unsupported,
                     priority_fn=_cpu_priority)


_register()
