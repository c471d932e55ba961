"""Block-sparse attention benchmark on BiFormer's bi-level routing shapes (used by ``tools/benchmark.py bsa``).

Backends side by side: the official expand-then-gather, the memory-aware blocked PyTorch backend, the fused Triton
kernel on CUDA, and ``dense`` (``F.scaled_dot_product_attention`` over all tokens of the map, heads-first inputs, no
mask: what full attention on the same tokens costs). Timing: median wall time of ``--repeat`` runs after ``--warmup``
runs, for inference (forward under no_grad) and for training (forward + backward). Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` above the inputs; on CPU by default (``--memory alloc``) the peak of live tensor
bytes allocated during one call, replayed from ``torch.profiler``'s memory timeline (``bench_utils.peak_alloc_mib``);
with ``--memory rss`` the growth of the process's peak resident set (``ru_maxrss``) over the inputs, each backend
measured in a fresh process (so one backend's peak cannot hide another's). Maps that ``n_win`` does not divide are
zero-padded to the next multiple (BiFormer's ``auto_pad``), as in the COCO setting.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__:
    from .bench_utils import (
        machine_info,
        markdown_table,
        maxrss_mib,
        peak_alloc_mib,
        select_shapes,
        time_ms,
        write_report,
    )
else:  # imported from the tools folder (python tools/benchmark.py)
    from bench_utils import (
        machine_info,
        markdown_table,
        maxrss_mib,
        peak_alloc_mib,
        select_shapes,
        time_ms,
        write_report,
    )

BENCHMARK_CLI = Path(__file__).resolve().parent / 'benchmark.py'

# BiFormer-S bi-level routing stages: name: (batch, H, W, dim, heads, n_win, topk); heads = dim / 32 as in BiFormer
BSA_SHAPES = {
    # BiFormer's real settings (issue 4): ImageNet 224 stage-1 map with topk 1/4/16, ADE20K 512 crop (n_win 8), COCO
    # 800x1216 (n_win 16, maps padded to multiples of 16: 200x304 -> 208x304, 100x152 -> 112x160)
    'in224_56_topk1': (4, 56, 56, 64, 2, 7, 1),
    'in224_56_topk4': (4, 56, 56, 64, 2, 7, 4),
    'in224_56_topk16': (4, 56, 56, 64, 2, 7, 16),
    'ade512_s1': (1, 128, 128, 64, 2, 8, 1),   # 64 regions of 16x16 tokens
    'ade512_s1_topk4': (1, 128, 128, 64, 2, 8, 4),    # the ADE20K stage-1 map with larger topk
    'ade512_s1_topk8': (1, 128, 128, 64, 2, 8, 8),
    'ade512_s1_topk16': (1, 128, 128, 64, 2, 8, 16),
    'coco_s1': (1, 200, 304, 64, 2, 16, 1),    # padded to 208x304: 256 regions of 13x19
    'coco_s2': (1, 100, 152, 128, 4, 16, 4),   # padded to 112x160: 256 regions of 7x10
    'in224_s1': (4, 56, 56, 64, 2, 7, 1),     # ImageNet 224, stage 1: 49 regions of 8x8 tokens, topk 1
    'in224_s2': (4, 28, 28, 128, 4, 7, 4),    # stage 2: 49 regions of 4x4, topk 4
    'in224_s3': (4, 14, 14, 256, 8, 7, 16),   # stage 3: 49 regions of 2x2, topk 16
    'ade512_s2': (1, 64, 64, 128, 4, 8, 4),   # ADE20K 512 crop, stage 2: 64 regions of 8x8, topk 4
    'ade512_s3': (1, 32, 32, 256, 8, 8, 16),  # stage 3: 64 regions of 4x4, topk 16
    # BiFormer-S classification model at 512 (n_win 7: maps padded to 133, 70, 35; regions of 19x19, 10x10, 5x5)
    'bif512_s1': (1, 128, 128, 64, 2, 7, 1),
    'bif512_s2': (1, 64, 64, 128, 4, 7, 4),
    'bif512_s3': (1, 32, 32, 256, 8, 7, 16),
    'tiny': (1, 8, 8, 16, 2, 2, 2),           # smoke test only, not in the default set
}
DEFAULT_SHAPES = ['in224_56_topk1', 'in224_56_topk4', 'in224_56_topk16', 'ade512_s1', 'coco_s1', 'in224_s2',
                  'in224_s3']


def _padded(H, W, n_win):
    return -(-H // n_win) * n_win, -(-W // n_win) * n_win


def _bsa_inputs(shape, device, dtype, seed=0):
    """Region-partitioned q/k/v and routing indices of one BiFormer BRA call (routing done once, outside timing)."""
    from visionattn.ops.routing import region_partition, topk_routing

    B, H, W, C, heads, n_win, topk = shape
    g = torch.Generator().manual_seed(seed)
    Hp, Wp = _padded(H, W, n_win)
    q, k, v = (F.pad(torch.randn(B, H, W, C, generator=g), (0, 0, 0, Wp - W, 0, Hp - H)).to(device, dtype)
               for _ in range(3))
    R = n_win * n_win
    parts = [region_partition(t, n_win) for t in (q, k, v)]
    idx = topk_routing(parts[0].mean(2), parts[1].mean(2), topk, C ** -0.5)[:, None]
    T = parts[0].shape[2]
    q, k, v = (p.reshape(B, R, T, heads, C // heads).contiguous() for p in parts)
    return q, k, v, idx, C ** -0.5


def bsa_measure(name, backend, device, dtype, warmup, repeat, modes=('infer', 'train'), memory='alloc'):
    """Measure one backend (or ``'dense'``) on one shape in this process; a dict of times (ms) and peaks (MiB)."""
    from visionattn.ops.block_sparse import block_sparse_attention

    q, k, v, idx, scale = _bsa_inputs(BSA_SHAPES[name], device, dtype)
    if backend == 'dense':  # all tokens of the (padded) map, heads-first
        q, k, v = (x.permute(0, 3, 1, 2, 4).flatten(2, 3).contiguous() for x in (q, k, v))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grad = torch.randn_like(q[..., :v.shape[-1]])

    def call(q_, k_, v_):
        if backend == 'dense':
            return F.scaled_dot_product_attention(q_, k_, v_, scale=scale)
        return block_sparse_attention(q_, k_, v_, idx, scale, backend=backend)

    def infer():
        with torch.no_grad():
            return call(q, k, v)

    def train():
        for t in leaves:
            t.grad = None
        call(*leaves).backward(grad)

    if memory == 'alloc' and device == 'cpu':
        res = {}
        for mode, fn in (('infer', infer), ('train', train)):
            if mode in modes:
                fn()  # one-time costs outside the peak
                res[f'{mode}_peak_mib'] = peak_alloc_mib(fn)
                res[f'{mode}_ms'] = time_ms(fn, device, max(warmup - 1, 0), repeat)
        return res

    if device == 'cpu' and backend != 'dense':
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
    res = bsa_measure(args.shape, args.backend, args.device, dtype, args.warmup, args.repeat, (args.mode,), 'rss')
    print('RESULT ' + json.dumps(res))


def run_bsa(args):
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backends.split(',') if args.backends else (
        ['gather', 'blocked'] + (['triton'] if args.device == 'cuda' else ['cpu']) + ['dense'])
    shapes = list(BSA_SHAPES)[:-1] if args.shapes == 'all' else select_shapes(
        args.shapes or ','.join(DEFAULT_SHAPES), BSA_SHAPES)
    results = []
    for s in shapes:
        B, H, W, C, heads, n_win, topk = BSA_SHAPES[s]
        Hp, Wp = _padded(H, W, n_win)
        row = {'shape': s, 'batch': B, 'H': H, 'W': W, 'padded': [Hp, Wp], 'dim': C, 'heads': heads, 'n_win': n_win,
               'topk': topk, 'tokens_per_region': (Hp // n_win) * (Wp // n_win)}
        for b in backends:
            if b == 'dense' and Hp * Wp > args.max_dense_tokens:
                row[b] = {'skipped': f'{Hp * Wp} tokens > --max-dense-tokens'}
                print(f'{s:10s} {b:8s} skipped', flush=True)
                continue
            if args.device == 'cpu' and args.memory == 'rss' and not args.in_process:
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
                res = bsa_measure(s, b, args.device, dtype, args.warmup, args.repeat, memory=args.memory)
            row[b] = res
            print(f'{s:10s} {b:8s} infer {res["infer_ms"]:9.2f} ms {res["infer_peak_mib"]:9.1f} MiB | '
                  f'train {res["train_ms"]:9.2f} ms {res["train_peak_mib"]:9.1f} MiB', flush=True)
        if 'gather' in backends:
            for b in backends:
                if b == 'gather' or 'skipped' in row[b]:
                    continue
                for key in ('infer_ms', 'train_ms', 'infer_peak_mib', 'train_peak_mib'):
                    den = row[b][key]
                    row.setdefault('ratio_gather_over', {}).setdefault(b, {})[key] = (
                        row['gather'][key] / den if den > 0 else None)
        results.append(row)
    if args.device == 'cuda':
        memory = 'cuda max_memory_allocated above the inputs'
    elif args.memory == 'alloc':
        memory = 'peak of live tensor bytes allocated during one call (torch.profiler memory timeline)'
    elif args.in_process:
        memory = 'growth of peak RSS over the inputs, all backends in one process (later peaks understated)'
    else:
        memory = 'growth of peak RSS over the inputs, fresh process per backend and mode'
    report = {'benchmark': 'bsa', 'machine': machine_info(args.device), 'dtype': args.dtype, 'warmup': args.warmup,
              'repeat': args.repeat, 'memory': memory,
              'dense': 'F.scaled_dot_product_attention over all tokens of the (padded) map, heads-first, no mask',
              'results': results}
    md = f'dtype {args.dtype}, {args.warmup} warmup, median of {args.repeat}; memory: {memory}.\n\n'
    write_report(report, 'bsa', args.device, args.out, markdown=md + bsa_markdown(results, backends))
    return report


def bsa_markdown(results, backends):
    """Rows per shape and mode: time / peak per backend, and gather's time and peak over each other backend's."""
    others = [b for b in backends if b != 'gather'] if 'gather' in backends else []
    headers = ['shape', 'config', 'mode'] + backends + [f'gather / {b} (time, mem)' for b in others]
    rows = []
    for r in results:
        pad = '' if [r['H'], r['W']] == r['padded'] else f" (pad {r['padded'][0]}x{r['padded'][1]})"
        cfg = (f"B{r['batch']} {r['H']}x{r['W']}{pad} C{r['dim']} h{r['heads']} S{r['n_win']} topk{r['topk']} "
               f"({r['tokens_per_region']} tok/region)")
        for mode in ('infer', 'train'):
            cells = []
            for b in backends:
                res = r.get(b, {})
                cells.append('skipped' if 'skipped' in res else
                             f"{res[mode + '_ms']:.1f} ms / {res[mode + '_peak_mib']:.1f} MiB")
            for b in others:
                ratio = r.get('ratio_gather_over', {}).get(b)
                t, m = (None, None) if ratio is None else (ratio[mode + '_ms'], ratio[mode + '_peak_mib'])
                cells.append('n/a' if t is None else f"{t:.2f}x, {'inf' if m is None else f'{m:.2f}x'}")
            rows.append([r['shape'], cfg, 'fwd' if mode == 'infer' else 'fwd+bwd'] + cells)
    notes = ('Cells: median time / peak memory of one call. `dense`: F.scaled_dot_product_attention over all tokens '
             'of the map (no mask). `gather / x`: gather\'s time and peak over x\'s (> 1: x is faster / smaller).\n\n')
    return notes + markdown_table(headers, rows)


def add_bsa_parser(sub):
    p = sub.add_parser('bsa', help='block-sparse attention backends on BiFormer routing shapes')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--backends', default='',
                   help='comma list of block-sparse backends plus "dense" (default: gather,blocked,triton on cuda '
                        'or cpu on cpu,dense)')
    p.add_argument('--shapes', default='', help=f'comma list of {list(BSA_SHAPES)} or "all" (default: '
                                                f'{",".join(DEFAULT_SHAPES)})')
    p.add_argument('--memory', default='alloc', choices=['alloc', 'rss'],
                   help='CPU peak memory: alloc = peak live tensor bytes (torch.profiler memory timeline, in process); '
                        'rss = growth of peak RSS (fresh process per backend and mode unless --in-process)')
    p.add_argument('--max-dense-tokens', type=int, default=20000,
                   help='skip dense SDPA above this many tokens of the (padded) map (COCO stage 1, 63k tokens, takes '
                        'minutes per call on one CPU core)')
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
