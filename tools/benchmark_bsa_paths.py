"""Side by side on one core: block-sparse backend ``blocked`` against the fused CPU kernels' two paths (``rows``: the
row kernel everywhere; ``gemm``: the GEMM path everywhere) and the default rule (``cpu``: GEMM path for key blocks of
>= ``GEMM_MIN_TOKENS`` tokens), forward and forward+backward, fp32, median of ``--repeat`` interleaved runs.

    OMP_NUM_THREADS=1 taskset -c 1 python tools/benchmark.py bsa-paths --shapes in224_56_topk4,bif512_s1

Prints a Markdown table (the op-level table of ``benchmarks/bsa_fused_cpu_gemm_2026-12-02.md``).
"""
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__:  # imported as tools.benchmark_bsa_paths
    from .benchmark_bsa import BSA_SHAPES, _bsa_inputs
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchmark_bsa import BSA_SHAPES, _bsa_inputs  # noqa: E402


def _call(variant: str, q, k, v, idx, scale: float, train: bool) -> None:
    from visionattn.ops.block_sparse import block_sparse_attention
    from visionattn.ops.cpu import block_sparse as cpu_bsa
    backend = variant if variant in ('blocked', 'dense') else 'cpu'
    saved = cpu_bsa.GEMM_MIN_TOKENS
    cpu_bsa.GEMM_MIN_TOKENS = {'rows': 10 ** 9, 'gemm': 1}.get(variant, saved)
    try:
        if train:
            xs = [t.detach().requires_grad_() for t in (q, k, v)]
            out = block_sparse_attention(*xs, idx, scale, backend=backend)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                block_sparse_attention(q, k, v, idx, scale, backend=backend)
    finally:
        cpu_bsa.GEMM_MIN_TOKENS = saved


def add_bsa_paths_parser(sub) -> None:
    p = sub.add_parser('bsa-paths', help=__doc__.splitlines()[0], description=__doc__.splitlines()[0])
    p.add_argument('--shapes', required=True, help=f'comma list of {list(BSA_SHAPES)}')
    p.add_argument('--variants', default='blocked,rows,gemm,cpu',
                   help='comma list: blocked, dense, rows, gemm, cpu (the first is the ratios\' numerator)')
    p.add_argument('--repeat', type=int, default=3)


def run_bsa_paths(args) -> None:
    torch.set_num_threads(1)
    variants = args.variants.split(',')
    print(f'load average {os.getloadavg()}, torch {torch.__version__}, 1 thread; ratios: {variants[0]} / x')
    print('| shape | key block | mode | ' + ' | '.join(variants) + ' | ' +
          ' | '.join(f'{variants[0]} / {x}' for x in variants[1:]) + ' |')
    print('|---' * (3 + 2 * len(variants) - 1) + '|')
    for name in args.shapes.split(','):
        q, k, v, idx, scale = _bsa_inputs(BSA_SHAPES[name], 'cpu', torch.float32)
        for train in (False, True):
            times = {x: [] for x in variants}
            for x in variants:
                _call(x, q, k, v, idx, scale, train)
            for _ in range(args.repeat):
                for x in variants:
                    t0 = time.perf_counter()
                    _call(x, q, k, v, idx, scale, train)
                    times[x].append(time.perf_counter() - t0)
            med = {x: statistics.median(t) * 1e3 for x, t in times.items()}
            base = med[variants[0]]
            print(f"| {name} | {k.shape[2]} tok, topk {idx.shape[-1]} | {'fwd+bwd' if train else 'fwd'} | " +
                  ' | '.join(f'{m:.1f} ms' for m in med.values()) + ' | ' +
                  ' | '.join(f'{base / med[x]:.2f}x' for x in variants[1:]) + ' |', flush=True)
