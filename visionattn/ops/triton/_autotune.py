"""``triton.autotune`` over the tile configs that fit the target's shared memory.

Only the forward kernels of GNA and block-sparse attention are autotuned: they store each output element once, so
running them several times while benchmarking leaves the result intact, and the candidate configs differ only in the
key chunk (``BLOCK_N``) and the pipeline depth, which change rounding and speed, not the math. The backward kernels
accumulate dK / dV (and the bias / rpb gradients) with fp32 atomics into zero-initialised buffers: benchmarking them
would need those buffers reset between runs and would still make the atomics' summation order, and so the rounding of
the gradients, depend on which config won the race on that run; they keep one per-target config (largest tiles that
fit). The top-k kernels have a single config per head dim (their tiles are bounded by registers, not shared memory)
and are not autotuned either.

``early_config_prune`` drops every config whose shared-memory estimate exceeds the current target's per-block limit
(``_target.shared_memory_limit``) and keeps the wrapper's fixed choice when none fits. Under ``TRITON_INTERPRET=1``
(and whenever a caller pins the tile) the wrappers launch the plain kernel with the fixed config: one config, no
benchmarking. ``_compile_check.compile_only`` compiles every config the pruning keeps, so each config autotune could
choose on a target is checked to compile and fit there.
"""
import os
from typing import Callable, Dict, List, Sequence, Tuple

import triton

__all__ = ['interpreting', 'smem_autotune']


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on the CPU through Triton's interpreter)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def smem_autotune(fn, key: Sequence[str], candidates: Callable[[Dict[str, object], int], List[Tuple[int, int, int]]]):
    """``triton.autotune`` of the JIT kernel ``fn`` keyed on ``key``.

    Args:
        fn: the ``@triton.jit`` kernel (left untouched; the wrappers still launch it directly with a fixed config).
        key: argument names whose values select a config (argument dtypes are added by Triton).
        candidates: ``(arguments of the call, shared-memory limit) -> [(BLOCK_N, num_warps, num_stages), ...]``, the
            configs that fit, best guess first; never empty (the wrapper's fixed choice when nothing fits).
    """
    from ._target import shared_memory_limit
    space = [(bn, w, s) for bn in (16, 32, 64) for w in (4, 8) for s in (1, 2, 3)]
    configs = [triton.Config({'BLOCK_N': bn}, num_warps=w, num_stages=s) for bn, w, s in space]

    def prune(configs, named_args, **kwargs):
        keep = set(candidates({**named_args, **kwargs}, shared_memory_limit()))
        out = [c for c in configs if (c.kwargs['BLOCK_N'], c.num_warps, c.num_stages) in keep]
        assert out, f'no config among {sorted(keep)} is in the autotune space'
        return out

    return triton.autotune(configs=configs, key=list(key), prune_configs_by={'early_config_prune': prune})(fn)
