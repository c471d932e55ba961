"""NATTEN adapter (backend ``natten`` of ``visionattn.ops.neighborhood``): NATTEN's ``na1d/na2d/na3d``.

A peer, not a dependency: used when NATTEN >= 0.20 is installed and can run the call (no rpb; on CPU only its Flex
path, forward only); ranked below ``blocked`` on CPU and below ``triton`` on CUDA.
"""
from functools import lru_cache
from typing import Optional

import torch

__all__ = ['natten_backend', 'natten_priority', 'natten_unsupported']


@lru_cache(maxsize=1)
def _natten():
    """``(natten module or None, reason it is unusable or None)``, imported once."""
    try:
        import natten
        import natten.backends  # noqa: F401  (backend choice, used by the unsupported check)
    except Exception as e:  # not installed, or installed but broken (e.g. a build for another torch)
        return None, f'natten is not importable ({type(e).__name__}: {e})'
    fns = [getattr(natten, f'na{i}d', None) for i in (1, 2, 3)]
    if any(f is None for f in fns):
        return None, f'natten {getattr(natten, "__version__", "?")} has no na1d/na2d/na3d (needs >= 0.20)'
    return natten, None


@lru_cache(maxsize=1)
def _natten_takes_additional_kv() -> bool:
    import inspect
    natten, _ = _natten()
    return 'additional_keys' in inspect.signature(natten.na2d).parameters


def _natten_inputs(query, key, value, additional_keys, additional_values):
    """The tensors handed to natten: detached when no gradient is needed (natten's CPU Flex path refuses any tensor
    that requires grad, even under no_grad)."""
    xs = [query, key, value, additional_keys, additional_values]
    if not torch.is_grad_enabled():
        xs = [None if x is None else x.detach() for x in xs]
    return xs


def natten_unsupported(query, key, value, kernel_size, stride, dilation, is_causal, rpb=None, scale=None,
                        additional_keys=None, additional_values=None, **kwargs) -> Optional[str]:
    natten, reason = _natten()
    if natten is None:
        return reason
    version = getattr(natten, '__version__', '?')
    if rpb is not None:
        return f'rpb given: natten (>= 0.18; installed {version}) dropped relative positional bias'
    n = query.dim() - 3
    if n not in (1, 2, 3):
        return f'natten runs 1-3 spatial axes, got {n}'
    if min(kernel_size) < 2:
        return f'natten requires kernel_size >= 2 on every axis, got {tuple(kernel_size)}'
    if scale == 0:
        return 'scale 0: natten replaces a zero scale by the default head_dim ** -0.5'
    if additional_keys is not None and not _natten_takes_additional_kv():
        return f'additional keys/values given: natten {version} cannot take them'
    if torch.compiler.is_compiling():
        return 'under torch.compile: natten is not registered as a traceable op here'
    q, k, v, ak, av = _natten_inputs(query, key, value, additional_keys, additional_values)
    if not query.is_cuda and any(x is not None and x.requires_grad for x in (q, k, v, ak, av)):
        return (f'gradients required on {query.device.type}: natten\'s only non-CUDA path (Flex Attention, '
                'uncompiled) has no backward')
    if (n == 1 and kernel_size[0] == query.shape[1] and is_causal[0] and additional_keys is None
            and not query.is_cuda):
        # natten turns this into plain causal attention, and its Flex FMHA has no causal mask
        return f'1-D causal with kernel_size == length ({kernel_size[0]}) on {query.device.type}: natten\'s Flex ' \
               'FMHA has no causal mask'
    from natten.backends import choose_backend
    try:
        choose_backend(q, k, v, torch_compile=False)
    except NotImplementedError:
        from natten.backends.configs.checks import can_run_flex_attention
        try:  # the Flex check (the path that runs anywhere) raises with the precise reason
            can_run_flex_attention(q, k, v, torch_compile=False, raise_error=True)
        except Exception as e:
            return f'natten {version} has no backend for this call ({query.dtype}, {query.device.type}): {e}'
        return f'natten {version} has no backend for this call ({query.dtype}, {query.device.type}, ' \
               f'head dims {query.shape[-1]}/{value.shape[-1]})'
    return None


def natten_backend(query, key, value, kernel_size, stride, dilation, is_causal, rpb, scale, additional_keys,
                    additional_values):
    if rpb is not None:  # only reachable by calling this function directly
        raise ValueError('natten cannot take rpb')
    natten, _ = _natten()
    q, k, v, ak, av = _natten_inputs(query, key, value, additional_keys, additional_values)
    fn = (natten.na1d, natten.na2d, natten.na3d)[query.dim() - 4]
    kwargs = {} if ak is None else {'additional_keys': ak, 'additional_values': av}
    return fn(q, k, v, kernel_size=tuple(kernel_size), stride=tuple(stride), dilation=tuple(dilation),
              is_causal=tuple(bool(c) for c in is_causal), scale=scale, **kwargs)


def natten_priority(query, **kwargs) -> int:
    # CPU: natten only has its uncompiled Flex path there, measured ~13x slower than dense SDPA and far slower than
    # `blocked` (tools/benchmark.py gna), so it ranks below `blocked`. CUDA: NATTEN's fused CUTLASS/Hopper FNA kernels
    # beat PyTorch tiles, so it ranks above `blocked`; below our `triton` kernels, which take rpb too. No GPU was
    # available when this was written: the CUDA order (natten vs triton) is unmeasured.
    return 15 if query.is_cuda else 5
