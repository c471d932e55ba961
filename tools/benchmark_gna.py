"""GNA (neighborhood attention) benchmark: backends side by side on NAT/DiNAT-like and strided shapes.

Used by ``tools/benchmark.py gna``; times are medians of ``--repeat`` runs after ``--warmup`` runs, for inference
(forward under no_grad) and training (forward + backward); on CUDA also the peak memory above the inputs.
"""

import torch
from bench_utils import machine_info, select_shapes, time_ms, write_report

# name: (batch, spatial shape, heads, head_dim, kernel_size, stride, dilation, is_causal, rpb)
GNA_SHAPES = {
    'nat_s1': (2, (56, 56), 2, 32, 7, 1, 1, False, True),            # NAT-Tiny stage 1 at 224
    'nat_s3': (2, (14, 14), 8, 32, 7, 1, 1, False, True),            # NAT-Tiny stage 3 at 224
    'dinat_s2': (2, (28, 28), 4, 32, 7, 1, 4, False, True),          # DiNAT-Tiny stage 2, dilated layer
    'gna_s1_stride': (2, (56, 56), 2, 32, 8, 4, 1, False, False),    # strided GNA, k=8, s=4
    'blocked_8': (2, (56, 56), 2, 32, 8, 8, 1, False, False),        # s = k: blocked (window) attention
    'seq_1d': (2, (4096,), 4, 64, 128, 1, 1, True, False),           # 1-D causal sliding window
    'video_3d': (1, (8, 16, 16), 4, 32, (3, 5, 5), 1, 1, False, False),
    'tiny': (1, (8, 8), 2, 16, 3, 1, 1, False, True),                # smoke test only, not in the default set
}


def gna_measure(name, backend, device, dtype, warmup, repeat):
    from visionattn.ops import neighborhood_attention

    b, shape, heads, dim, ks, st, dil, causal, has_rpb = GNA_SHAPES[name]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, *shape, heads, dim, generator=g).to(device, dtype) for _ in range(3))
    n = len(shape)
    ks_t = ks if isinstance(ks, tuple) else (ks,) * n
    rpb = torch.randn(heads, *[2 * x - 1 for x in ks_t], generator=g).to(device, dtype) if has_rpb else None
    leaves = [t.clone().requires_grad_() for t in (q, k, v)] + ([rpb.clone().requires_grad_()] if has_rpb else [])
    grad = torch.randn_like(q)

    def infer():
        with torch.no_grad():
            return neighborhood_attention(q, k, v, ks, st, dil, causal, rpb, backend=backend)

    def train():
        for t in leaves:
            t.grad = None
        out = neighborhood_attention(*leaves[:3], ks, st, dil, causal, leaves[3] if has_rpb else None,
                                     backend=backend)
        out.backward(grad)

    res = {}
    for mode, fn in (('infer', infer), ('train', train)):
        try:
            if device == 'cuda':
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn()
                torch.cuda.synchronize()
                res[f'{mode}_peak_mib'] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            res[f'{mode}_ms'] = time_ms(fn, device, warmup, repeat)
        except Exception as e:  # a backend that cannot run a case (e.g. reference out of memory) is reported
            res[f'{mode}_error'] = f'{type(e).__name__}: {str(e)[:200]}'
    return res


def _fmt(res, mode):
    return f'{res[mode + "_ms"]:9.2f} ms' if mode + '_ms' in res else f'{"error":>12s}'


def add_gna_parser(sub):
    p = sub.add_parser('gna', help='generalized neighborhood attention backends side by side')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--backends', default='', help='comma list (default: reference,blocked[,triton on cuda])')
    p.add_argument('--shapes', default='', help=f'comma list of {list(GNA_SHAPES)} (default: all but tiny)')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeat', type=int, default=5)
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (0: torch default)')
    p.add_argument('--max-reference-tokens', type=int, default=3200,
                   help='skip the dense O(tokens^2) reference above this many tokens')
    p.add_argument('--out', default='', help='JSON path (default: work_dirs/benchmark/gna_<device>_<time>.json)')
    return p


def run_gna(args):
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backends.split(',') if args.backends else (
        ['reference', 'blocked'] + (['triton'] if args.device == 'cuda' else []))
    shapes = select_shapes(args.shapes, GNA_SHAPES)
    results = []
    for s in shapes:
        b, shape, heads, dim, ks, st, dil, causal, has_rpb = GNA_SHAPES[s]
        tokens = 1
        for x in shape:
            tokens *= x
        row = {'shape': s, 'batch': b, 'spatial': list(shape), 'heads': heads, 'head_dim': dim, 'kernel_size': ks,
               'stride': st, 'dilation': dil, 'is_causal': causal, 'rpb': has_rpb}
        for bk in backends:
            if bk == 'reference' and tokens > args.max_reference_tokens:
                row[bk] = {'skipped': f'{tokens} tokens > --max-reference-tokens'}
                continue
            res = gna_measure(s, bk, args.device, dtype, args.warmup, args.repeat)
            row[bk] = res
            print(f'{s:14s} {bk:9s} infer {_fmt(res, "infer")} | train {_fmt(res, "train")}', flush=True)
        results.append(row)
    report = {'benchmark': 'gna', 'machine': machine_info(args.device), 'dtype': args.dtype, 'warmup': args.warmup,
              'repeat': args.repeat, 'results': results}
    write_report(report, 'gna', args.device, args.out)
    return report
