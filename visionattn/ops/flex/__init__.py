"""FlexAttention backends (``torch.nn.attention.flex_attention`` with a ``BlockMask``): ``flex`` for GNA
(``ops/flex/neighborhood.py``) and for block-sparse attention (``ops/flex/block_sparse.py``).

A second GPU path beside the project's Triton kernels (and a second oracle for them on a device): on CUDA the flex
call is compiled (``torch.compile(flex_attention)``, inductor's Triton template), ranked below ``triton``. On CPU
torch 2.14's FlexAttention runs forward only (its frontend refuses tensors that require grad on CPU, eager or
compiled) and eagerly runs the dense math path, so there it ranks below every other backend and needs no gradients.
``VISIONATTN_FLEX_COMPILE=1`` compiles on CPU too (inductor's C++ flex template), ``0`` never compiles.
"""
import os
import warnings
from functools import lru_cache
from typing import Optional

import torch

__all__ = ['flex_attention_call', 'flex_unsupported']


@lru_cache(maxsize=1)
def _flex():
    """``(flex_attention, create_block_mask, reason unusable or None)``."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except Exception as e:  # older torch
        return None, None, f'torch.nn.attention.flex_attention is not importable ({type(e).__name__}: {e})'
    return flex_attention, create_block_mask, None


@lru_cache(maxsize=1)
def _compiled_flex():
    return torch.compile(_flex()[0], dynamic=False)


def _compile_for(device: torch.device) -> bool:
    flag = os.environ.get('VISIONATTN_FLEX_COMPILE', '').strip()
    if flag in ('0', '1'):
        return flag == '1'
    return device.type == 'cuda'


def flex_unsupported(query: torch.Tensor, *tensors: Optional[torch.Tensor]) -> Optional[str]:
    """The checks both flex backends share: a reason, or None."""
    from .._dispatch import counting_ops
    if _flex()[2] is not None:
        return _flex()[2]
    if counting_ops():
        return 'inside opaque_ops(): FLOP counters see the ops\' formulas, not flex\'s dense score matrix'
    if torch.compiler.is_compiling():
        return 'under torch.compile: the flex backend builds its BlockMask eagerly (not traced yet)'
    if query.device.type not in ('cpu', 'cuda'):
        return f'device {query.device.type}: only CPU and CUDA are checked'
    if query.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        return f'dtype {query.dtype} not supported'
    if query.device.type == 'cuda' and query.dtype == torch.float64:
        return 'float64 on CUDA: the compiled flex kernel takes fp32/fp16/bf16'
    if query.device.type == 'cpu' and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (query,) + tensors):
        return 'gradients required on CPU: torch\'s FlexAttention has no CPU backward'
    return None


def flex_attention_call(q, k, v, score_mod, block_mask, scale: float) -> torch.Tensor:
    """``flex_attention`` on ``[B, H, L, D]`` tensors, compiled on CUDA (see the module docstring)."""
    flex = _compiled_flex() if _compile_for(q.device) else _flex()[0]
    if not torch.is_grad_enabled():  # flex refuses CPU tensors that require grad even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*flex_attention called without torch.compile.*')
        warnings.filterwarnings('ignore', message='.*print statements or breakpoints.*')
        return flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


def flex_priority(high: int, low: int):
    """A ``priority_fn``: ``high`` on CUDA, ``low`` elsewhere."""
    def priority(query: torch.Tensor, **kwargs) -> int:
        return high if query.is_cuda else low
    return priority
