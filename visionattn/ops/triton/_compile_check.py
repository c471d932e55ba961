"""Compile the project's Triton kernels for real GPU targets on a machine without a GPU, and read their resources.

A stand-in for ``triton.runtime.driver.active`` reports a chosen ``GPUTarget`` and every kernel launch becomes a
compile-only warmup, so the project's own launch wrappers (``neighborhood``, ``block_sparse``, ``topk`` in this
folder) build the arguments, pick their per-target tile sizes and compile, exactly as they would on that GPU. From
each compiled kernel we read registers and spills (``cuobjdump -res-usage`` on the cubin, the figures the CUDA
driver reports), static shared memory (``metadata.shared``) and the tensor-core instructions of its PTX
(``mma.sync``, ``wgmma.mma_async``, ``tcgen05.mma``).

Used by ``tests/ops/test_triton_compile.py`` and ``tools/triton_resources.py``.
"""
import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver as _driver
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from ._target import SMEM_LIMIT, shared_memory_limit

__all__ = [
    'SMEM_LIMIT', 'ARCHS', 'SPILL_BUDGET', 'Case', 'KernelResources', 'compile_only', 'cases', 'run_case',
    'known_archs', 'shared_memory_limit', 'compile_cases', 'check',
]

ARCHS: Tuple[int, ...] = (80, 86, 89, 90, 100, 120)
# Register spills we accept per kernel, in Triton's unit (n_spills: local memory, stack frame included, bytes per
# thread / 4, which is what the CUDA driver reports as CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES): 32 (128 bytes per thread,
# a few spilled loop-invariant values), 64 for fp32 at head dim >= 128 (no registered model uses it; the GNA backward
# spills 50-56 there on sm_90/sm_100). Measured: 0 up to head dim 64 except a few single-digit cases.
SPILL_BUDGET = 32
SPILL_BUDGET_FP32_D128 = 64

_TC_PATTERNS = (r'\bmma\.sync\.', r'\bwgmma\.mma_async\.', r'\btcgen05\.mma\b')


def known_archs() -> Tuple[int, ...]:
    """The targets of ``ARCHS`` the installed Triton can compile for (its bundled ptxas decides)."""
    from triton.backends.nvidia.compiler import CUDABackend
    out = []
    for arch in ARCHS:
        try:
            CUDABackend(GPUTarget('cuda', arch, 32))
        except Exception:  # noqa: BLE001 - an arch this Triton rejects
            continue
        out.append(arch)
    return tuple(out)


class _CompileOnlyDriver:
    """Enough of a Triton driver for ``JITFunction.run`` to compile for ``target`` (no device)."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> str:
        # device_caches key of JITFunction: one binder (and kernel cache) per target
        return f'compile-only:{self.target.backend}:{self.target.arch}'

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device('cpu')


@dataclasses.dataclass
class KernelResources:
    kernel: str
    arch: int
    num_warps: int
    num_stages: int
    registers: int
    spills: int
    shared: int
    tensor_core: int
    constants: Dict[str, object]


def _cuobjdump() -> str:
    from triton.backends.nvidia.compiler import get_ptxas
    return os.path.join(os.path.dirname(get_ptxas(80).path), 'cuobjdump')


def _resources(compiled, arch: int) -> KernelResources:
    md = compiled.metadata
    with tempfile.NamedTemporaryFile(suffix='.cubin', delete=False) as f:
        f.write(compiled.asm['cubin'])
        path = f.name
    try:
        usage = subprocess.run([_cuobjdump(), '-res-usage', path], check=True, capture_output=True, text=True).stdout
    finally:
        os.remove(path)
    regs = re.search(r'REG:(\d+)', usage)
    stack = re.search(r'STACK:(\d+)', usage)
    local = re.search(r'LOCAL:(\d+)', usage)
    ptx = compiled.asm['ptx']
    tc = sum(len(re.findall(p, ptx)) for p in _TC_PATTERNS)
    consts = {k[0] if isinstance(k, tuple) else k: v for k, v in compiled.src.constants.items()}
    consts = {compiled.src.fn.arg_names[k] if isinstance(k, int) else k: v for k, v in consts.items()}
    return KernelResources(
        kernel=compiled.src.fn.__name__, arch=arch, num_warps=md.num_warps, num_stages=md.num_stages,
        registers=int(regs.group(1)) if regs else -1,
        spills=(int(stack.group(1)) + int(local.group(1))) // 4 if stack and local else -1,
        shared=md.shared, tensor_core=tc, constants=consts)


@contextlib.contextmanager
def compile_only(arch: int, warp_size: int = 32) -> Iterator[List[KernelResources]]:
    """Within the block, Triton compiles for ``GPUTarget('cuda', arch, warp_size)`` and launches nothing; yields the
    list that receives the resources of every kernel the block "launched" (an autotuned kernel: one record per
    config its pruning keeps for ``arch``)."""
    target = GPUTarget('cuda', arch, warp_size)
    records: List[KernelResources] = []
    run = JITFunction.run
    prev = _driver._active

    def compile_run(self, *args, grid, warmup, **kwargs):
        compiled = run(self, *args, grid=grid, warmup=True, **kwargs)
        records.append(_resources(compiled, arch))
        return compiled

    def tuned_run(self, *args, **kwargs):
        # every config the shared-memory pruning keeps for this target (any of them may win the benchmark there)
        self.nargs = dict(zip(self.arg_names, args))
        try:
            configs = self.prune_configs(kwargs)
        finally:
            self.nargs = None
        return [self.fn.run(*args, **kwargs, **c.all_kwargs()) for c in configs][-1]

    _driver.set_active(_CompileOnlyDriver(target))
    JITFunction.run = compile_run
    tuned = Autotuner.run
    Autotuner.run = tuned_run
    try:
        yield records
    finally:
        JITFunction.run = run
        Autotuner.run = tuned
        _driver._active = prev


# ---------------------------------------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------------------------------------

KERNELS = ('gna', 'block_sparse', 'topk')
DTYPES = ('float16', 'bfloat16', 'float32')
HEAD_DIMS = (16, 24, 32, 64, 128)  # 24: TransNeXt, 32: NAT/DiNAT/BiFormer, 64: Sparsifiner/EViT
FEATURES = {
    'gna': ('base', 'rpb', 'extra_kv', 'causal', 'stride', 'dilation', '1d', '3d'),
    'block_sparse': ('base', 'bias', 'key_mask'),
    'topk': ('base', 'dense_rows'),
}
# fp16/bf16 kernels that are matrix products and must use tensor cores
GEMM_KERNELS = ('_gna_fwd_kernel', '_gna_bwd_kernel', '_bsa_fwd_kernel', '_bsa_bwd_kernel')


@dataclasses.dataclass(frozen=True)
class Case:
    kernel: str
    feature: str
    dtype: str
    head_dim: int
    arch: int

    @property
    def id(self) -> str:
        return f'{self.kernel}-{self.feature}-{self.dtype}-d{self.head_dim}-sm{self.arch}'


_FEATURE_CASE = dict(dtype='float16', head_dim=32, arch=86)


def cases(archs: Optional[Tuple[int, ...]] = None, head_dims: Tuple[int, ...] = HEAD_DIMS, subset: bool = False
          ) -> List[Case]:
    """The full matrix: every kernel x dtype x head dim x arch on the base case, plus each feature once per kernel x
    dtype x arch (at head dim 32). ``subset`` (the default test tier, about 40 cases, a few minutes on 2 cores): every
    kernel x dtype on sm_86 and sm_90 at head dim 64 and each kernel in fp16 on sm_80; every feature once (fp16, head
    dim 32, sm_86); fp32 at head dim 128 on sm_86 per kernel (the most shared memory per row on the smallest limit),
    GNA at head dims 24 (TransNeXt, bf16) and 16; one kernel on each other target the installed Triton knows (GNA on
    sm_89, top-k on sm_100, block-sparse on sm_120, whose limit is sm_86's)."""
    if subset:
        out = [Case(k, 'base', dt, 64, a) for k in KERNELS for dt in DTYPES for a in (86, 90)]
        out += [Case(k, 'base', 'float16', 64, 80) for k in KERNELS]
        out += [Case(k, f, **_FEATURE_CASE) for k in KERNELS for f in FEATURES[k][1:]]
        out += [Case(k, 'base', 'float32', 128, 86) for k in KERNELS]
        out += [Case('gna', 'base', 'bfloat16', 24, 86), Case('gna', 'base', 'float16', 16, 86)]
        known = archs or known_archs()
        return out + [Case(k, 'base', 'bfloat16', 32, a) for k, a in (('gna', 89), ('topk', 100), ('block_sparse', 120))
                      if a in known]
    archs = archs or known_archs()
    out = []
    for kernel in KERNELS:
        for dtype in DTYPES:
            for arch in archs:
                for d in head_dims:
                    out.append(Case(kernel, 'base', dtype, d, arch))
                for feat in FEATURES[kernel][1:]:
                    out.append(Case(kernel, feat, dtype, 32, arch))
    return out


def _gna_case(case: Case, dt: torch.dtype):
    from .neighborhood import _gna_triton_backward, _gna_triton_forward
    g = torch.Generator().manual_seed(0)
    feat, heads, d = case.feature, 2, case.head_dim
    spatial, ks, st, dil, causal = (14, 14), (7, 7), (1, 1), (1, 1), (False, False)
    if feat == '1d':
        spatial, ks, st, dil, causal = (56,), (7,), (1,), (1,), (False,)
    elif feat == '3d':
        spatial, ks, st, dil, causal = (6, 8, 8), (3, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False)
    elif feat == 'causal':
        causal = (True, False)
    elif feat == 'stride':
        st = (2, 2)
    elif feat == 'dilation':
        dil = (2, 2)
    shape = (2, *spatial, heads, d)
    q, k, v = (torch.randn(shape, generator=g).to(dt) for _ in range(3))
    rpb = torch.randn(heads, *[2 * x - 1 for x in ks], generator=g).to(dt) if feat == 'rpb' else None
    ak = av = None
    if feat == 'extra_kv':
        ak, av = (torch.randn(2, 9, heads, d, generator=g).to(dt) for _ in range(2))
    scale = d ** -0.5
    out, lse = _gna_triton_forward(q, k, v, ks, st, dil, causal, rpb, scale, ak, av)
    out, lse = torch.randn(out.shape, generator=g).to(dt), torch.randn(lse.shape, generator=g)
    _gna_triton_backward(torch.randn_like(out), q, k, v, out, lse, ks, st, dil, causal, rpb, scale, ak, av)


def _block_sparse_case(case: Case, dt: torch.dtype):
    from .block_sparse import block_sparse_bwd_triton, block_sparse_fwd_triton
    g = torch.Generator().manual_seed(0)
    B, N, T, H, topk, d = 2, 49, 64, 2, 4, case.head_dim  # BiFormer: 7x7 regions of 8x8 tokens
    q, k, v = (torch.randn(B, N, T, H, d, generator=g).to(dt) for _ in range(3))
    idx = torch.randint(0, N, (B, H, N, topk), generator=g)
    bias = torch.randn(B, H, N, topk, generator=g) if case.feature == 'bias' else None
    kbias = torch.randn(B, N, T, generator=g) if case.feature == 'key_mask' else None
    scale = d ** -0.5
    out, lse = block_sparse_fwd_triton(q, k, v, idx, bias, kbias, scale)
    out, lse = torch.randn(out.shape, generator=g).to(dt), torch.randn(lse.shape, generator=g)
    block_sparse_bwd_triton(torch.randn_like(out), q, k, v, out, lse, idx, bias, kbias, scale)


def _topk_case(case: Case, dt: torch.dtype):
    from .topk import topk_attention_bwd_triton, topk_attention_fwd_triton
    g = torch.Generator().manual_seed(0)
    B, N, H, K, d = 2, 197, 2, 49, case.head_dim  # Sparsifiner: 196 patches + class token, keep 25%
    nd = 1 if case.feature == 'dense_rows' else 0
    q, k, v = (torch.randn(B, N, H, d, generator=g).to(dt) for _ in range(3))
    idx = torch.randint(0, N, (B, H, N - nd, K), generator=g)
    scale = d ** -0.5
    out, lse = topk_attention_fwd_triton(q, k, v, idx, scale, nd)
    out, lse = torch.randn(out.shape, generator=g).to(dt), torch.randn(lse.shape, generator=g)
    topk_attention_bwd_triton(torch.randn_like(out), q, k, v, out, lse, idx, scale, nd)


_RUNNERS = {'gna': _gna_case, 'block_sparse': _block_sparse_case, 'topk': _topk_case}


def run_case(case: Case) -> List[KernelResources]:
    """Compile the forward and backward kernels of ``case`` for its arch through the launch wrappers; their
    resources (forward first)."""
    with compile_only(case.arch) as records:
        _RUNNERS[case.kernel](case, getattr(torch, case.dtype))
    return records


def _run(case: Case):
    try:
        return case, run_case(case), None
    except Exception as e:  # noqa: BLE001 - reported as a failing case
        return case, [], f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'


def compile_cases(cases: Sequence[Case], workers: Optional[int] = None
                  ) -> List[Tuple[Case, List[KernelResources], Optional[str]]]:
    """``(case, resources, error or None)`` of every case, compiled in a pool of ``workers`` processes (default: one
    per CPU), in case order."""
    workers = min(len(cases), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [_run(c) for c in cases]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn')) as pool:
        return list(pool.map(_run, cases, chunksize=1))


def check(case: Case, res: KernelResources) -> List[str]:
    """What is wrong with a compiled kernel of ``case``: shared memory over the arch's limit, spills over the
    budget, a GEMM-shaped fp16/bf16 kernel without tensor-core instructions."""
    problems = []
    limit = shared_memory_limit(case.arch)
    if res.shared > limit:
        problems.append(f'{res.kernel}: shared memory {res.shared} > {limit} bytes (sm_{case.arch})')
    budget = SPILL_BUDGET_FP32_D128 if case.dtype == 'float32' and case.head_dim >= 128 else SPILL_BUDGET
    if res.spills > budget or res.spills < 0:
        problems.append(f'{res.kernel}: {res.spills} register spills > budget {budget}')
    if res.kernel in GEMM_KERNELS and case.dtype != 'float32' and res.tensor_core == 0:
        problems.append(f'{res.kernel}: no tensor-core instruction in {case.dtype}')
    return problems
