"""Block-sparse attention benchmark on BiFormer's bi-level routing shapes (used by ``tools/benchmark.py bsa``).

Backends side by side: the official expand-then-gather, the memory-aware blocked PyTorch backend, and the fused Triton
kernel on CUDA. Timing: median wall time of ``--repeat`` runs after ``--warmup`` runs, for inference (forward under
no_grad) and for training (forward + backward). Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the
inputs; on CPU the growth of the process's peak resident set (``ru_maxrss``) over the inputs, each backend measured in
a fresh process (so one backend's peak cannot hide another's).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from bench_utils import machine_info, maxrss_mib, select_shapes, time_ms, write_report

BENCHMARK_CLI = Path(__file__).resolve().parent / 'benchmark.py'

# BiFormer-S bi-level routing stages: (name, batch, H, W, dim, heads, n_win, topk)
BSA_SHAPES = {
    'in224_s1': (4, 56, 56, 64, 2, 7, 1),     # ImageNet 224, stage 1: 49 regions of 8x8 tokens, topk 1
    'in224_s2': (4, 28, 28, 128, 4, 7, 4),    # stage 2: 49 regions of 4x4, topk 4
    'in224_s3': (4, 14, 14, 256, 8, 7, 16),   # stage 3: 49 regions of 2x2, topk 16
    'ade512_s2': (1, 64, 64, 128, 4, 8, 4),   # ADE20K 512 crop, stage 2: 64 regions of 8x8, topk 4
    'ade512_s3': (1, 32, 32, 256, 8, 8, 16),  # stage 3: 64 regions of 4x4, topk 16
    'tiny': (1, 8, 8, 16, 2, 2, 2),           # smoke test only, not in the default set
}


def _bsa_inputs(shape, device, dtype, seed=0):
    """Region-partitioned q/k/v and routing indices of one BiFormer BRA call (routing done once, outside timing)."""
    from visionattn.ops.routing import region_partition, topk_routing

    B, H, W, C, heads, n_win, topk = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, W, C, generator=g).to(device, dtype) for _ in range(3))
    R = n_win * n_win
    parts = [region_partition(t, n_win) for t in (q, k, v)]
    idx = topk_routing(parts[0].mean(2), parts[1].mean(2), topk, C ** -0.5)[:, None]
    T = parts[0].shape[2]
    q, k, v = (p.reshape(B, R, T, heads, C // heads).contiguous() for p in parts)
    return q, k, v, idx, C ** -0.5


def bsa_measure(name, backend, device, dtype, warmup, repeat, modes=('infer', 'train')):
    """Measure one backend on one shape in this process; returns a dict of times (ms) and peaks (MiB)."""
    from visionattn.ops.block_sparse import block_sparse_attention

    q, k, v, idx, scale = _bsa_inputs(BSA_SHAPES[name], device, dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grad = torch.randn_like(q[..., :v.shape[-1]])

    def infer():
        with torch.no_grad():
            return block_sparse_attention(q, k, v, idx, scale, backend=backend)

    def train():
        for t in leaves:
            t.grad = None
        out = block_sparse_attention(*leaves, idx, scale, backend=backend)
        out.backward(grad)

    if device == 'cpu':
        # one call on a tiny problem first, so one-time costs (lazy library and kernel loading) stay out of the peak
        tq, tk, tv, tidx, _ = _bsa_inputs((1, 4, 4, 8, 1, 2, 1), device, dtype)
        tl = [t.requires_grad_() for t in (tq, tk, tv)]
        block_sparse_attention(*tl, tidx, backend=backend).sum().backward()
        del tq, tk, tv, tl

    res = {}
    fns = {'infer': infer, 'train': train}
    for mode in modes:
        fn = fns[mode]
        if device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            res[f'{mode}_peak_mib'] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        else:
            base = maxrss_mib()
            fn()
            res[f'{mode}_peak_mib'] = max(maxrss_mib() - base, 0.)
    for mode in modes:
        res[f'{mode}_ms'] = time_ms(fns[mode], device, warmup, repeat)
    return res


def _bsa_child(args):
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = bsa_measure(args.shape, args.backend, args.device, dtype, args.warmup, args.repeat, (args.mode,))
    print('RESULT ' + json.dumps(res))


def run_bsa(args):
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backends.split(',') if args.backends else (
        ['gather', 'blocked'] + (['triton'] if args.device == 'cuda' else []))
    shapes = select_shapes(args.shapes, BSA_SHAPES)
    results = []
    for s in shapes:
        B, H, W, C, heads, n_win, topk = BSA_SHAPES[s]
        row = {'shape': s, 'batch': B, 'H': H, 'W': W, 'dim': C, 'heads': heads, 'n_win': n_win, 'topk': topk,
               'tokens_per_region': (H // n_win) * (W // n_win)}
        for b in backends:
            if args.device == 'cpu' and not args.in_process:
                # a fresh process per backend and mode, so ru_maxrss measures that run alone
                res = {}
                for mode in ('infer', 'train'):
                    cmd = [sys.executable, str(BENCHMARK_CLI), 'bsa', '--child', '--shape', s, '--backend', b,
                           '--mode', mode,
                           '--device', 'cpu', '--dtype', args.dtype, '--warmup', str(args.warmup),
                           '--repeat', str(args.repeat), '--threads', str(args.threads)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                    res.update(json.loads(
                        next(ln for ln in out.splitlines() if ln.startswith('RESULT '))[len('RESULT '):]))
            else:
                res = bsa_measure(s, b, args.device, dtype, args.warmup, args.repeat)
            row[b] = res
            print(f'{s:10s} {b:8s} infer {res["infer_ms"]:9.2f} ms {res["infer_peak_mib"]:9.1f} MiB | '
                  f'train {res["train_ms"]:9.2f} ms {res["train_peak_mib"]:9.1f} MiB', flush=True)
        if 'gather' in backends:
            for b in backends:
                if b == 'gather':
                    continue
                for key in ('infer_ms', 'train_ms', 'infer_peak_mib', 'train_peak_mib'):
                    den = row[b][key]
                    row.setdefault('ratio_gather_over', {}).setdefault(b, {})[key] = (
                        row['gather'][key] / den if den > 0 else None)
        results.append(row)
    if args.device == 'cuda':
        memory = 'cuda max_memory_allocated above the inputs'
    elif args.in_process:
        memory = 'growth of peak RSS over the inputs, all backends in one process (later peaks understated)'
    else:
        memory = 'growth of peak RSS over the inputs, fresh process per backend and mode'
    report = {'benchmark': 'bsa', 'machine': machine_info(args.device), 'dtype': args.dtype, 'warmup': args.warmup,
              'repeat': args.repeat, 'memory': memory, 'results': results}
    write_report(report, 'bsa', args.device, args.out)
    return report


def add_bsa_parser(sub):
    p = sub.add_parser('bsa', help='block-sparse attention backends on BiFormer routing shapes')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--backends', default='', help='comma list (default: gather,blocked[,triton on cuda])')
    p.add_argument('--shapes', default='', help=f'comma list of {list(BSA_SHAPES)} (default: all)')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeat', type=int, default=5)
    p.add_argument('--threads', type=int, default=1,
                   help='torch CPU threads (default 1: on a shared, oversubscribed CPU OpenMP waits dominate; 0: torch '
                        'default)')
    p.add_argument('--out', default='', help='JSON path (default: work_dirs/benchmark/bsa_<device>_<time>.json)')
    p.add_argument('--in-process', action='store_true',
                   help='CPU: measure every backend in this process (faster; peaks after the first are understated)')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--shape', default='', help=argparse.SUPPRESS)
    p.add_argument('--backend', default='', help=argparse.SUPPRESS)
    p.add_argument('--mode', default='train', choices=['infer', 'train'], help=argparse.SUPPRESS)
    return p


def bsa_main(args):
    if args.child:
        _bsa_child(args)
    else:
        run_bsa(args)
