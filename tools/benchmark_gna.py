"""GNA (neighborhood attention) benchmark: backends side by side with dense SDPA and natten.

Used by ``tools/benchmark.py gna``. Columns per shape: each visionattn backend (``reference``, ``blocked``, ``triton``
on CUDA, ``cpu`` (the fused C++ kernels) on CPU), ``natten`` (the ``natten`` backend: NATTEN's own kernels; on CPU its
uncompiled Flex path, forward only) and ``dense`` (``F.scaled_dot_product_attention`` over all tokens, no mask, inputs
already heads-first: the "speed of dense attention" on the same tokens). Times are medians of ``--repeat`` runs after
``--warmup`` runs, for inference (forward under no_grad) and training (forward + backward). Peak memory, measured in a
separate call: on CUDA ``max_memory_allocated`` above the inputs; on CPU the peak of live tensor bytes allocated during
the call, replayed from ``torch.profiler``'s memory timeline (``bench_utils.peak_alloc_mib``). Ratios in the Markdown
table: speedups of ``blocked`` (time of the other / time of ``blocked``) over dense SDPA and over natten.
"""

import torch
import torch.nn.functional as F

if __package__:
    from .bench_utils import machine_info, markdown_table, peak_alloc_mib, select_shapes, time_ms, write_report
else:  # imported from the tools folder (python tools/benchmark.py)
    from bench_utils import machine_info, markdown_table, peak_alloc_mib, select_shapes, time_ms, write_report

# name: (batch, spatial shape, heads, head_dim, kernel_size, stride, dilation, is_causal, rpb)
GNA_SHAPES = {
    # the configs (3: GNA benchmark); na2d_56_k7 is the target config (blocked >= 5x dense, >= 20x natten)
    'na2d_56_k7': (4, (56, 56), 2, 32, 7, 1, 1, False, False),
    'na2d_28_k7_d2': (4, (28, 28), 4, 32, 7, 1, 2, False, False),
    'na3d_16x32x32_k377': (1, (16, 32, 32), 2, 32, (3, 7, 7), 1, 1, False, False),
    'na1d_4096_k127': (1, (4096,), 2, 32, 127, 1, 1, False, False),
    'na2d_56_k8_s4': (4, (56, 56), 2, 32, 8, 4, 1, False, False),      # strided GNA, k=8, s=4
    # model shapes
    'nat_s1': (2, (56, 56), 2, 32, 7, 1, 1, False, True),            # NAT-Tiny stage 1 at 224 (rpb)
    'nat_s3': (2, (14, 14), 8, 32, 7, 1, 1, False, True),            # NAT-Tiny stage 3 at 224
    'dinat_s2': (2, (28, 28), 4, 32, 7, 1, 4, False, True),          # DiNAT-Tiny stage 2, dilated layer
    'blocked_8': (2, (56, 56), 2, 32, 8, 8, 1, False, False),        # s = k: blocked (window) attention
    'seq_1d': (2, (4096,), 4, 64, 128, 1, 1, True, False),           # 1-D causal sliding window
    'video_3d': (1, (8, 16, 16), 4, 32, (3, 5, 5), 1, 1, False, False),
    'tiny': (1, (8, 8), 2, 16, 3, 1, 1, False, True),                # smoke test only, not in the default set
}
DEFAULT_SHAPES = ['na2d_56_k7', 'na2d_28_k7_d2', 'na3d_16x32x32_k377', 'na1d_4096_k127', 'na2d_56_k8_s4', 'nat_s1']


def _inputs(name, device, dtype):
    b, shape, heads, dim, ks, st, dil, causal, has_rpb = GNA_SHAPES[name]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, *shape, heads, dim, generator=g).to(device, dtype) for _ in range(3))
    n = len(shape)
    ks_t = ks if isinstance(ks, tuple) else (ks,) * n
    rpb = torch.randn(heads, *[2 * x - 1 for x in ks_t], generator=g).to(device, dtype) if has_rpb else None
    return q, k, v, rpb


def gna_measure(name, backend, device, dtype, warmup, repeat, memory=True):
    """Times (ms) and peaks (MiB) of one backend (or ``'dense'``) on one shape; errors are reported, not raised."""
    from visionattn.ops import neighborhood_attention

    _, _, _, _, ks, st, dil, causal, has_rpb = GNA_SHAPES[name]
    q, k, v, rpb = _inputs(name, device, dtype)
    if backend == 'dense':  # heads-first, flattened tokens: SDPA as it would be called on the same tokens
        q, k, v = (x.flatten(1, -3).transpose(1, 2).contiguous() for x in (q, k, v))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)] + ([rpb.clone().requires_grad_()] if has_rpb else [])
    grad = torch.randn_like(q)

    def call(q_, k_, v_, rpb_):
        if backend == 'dense':
            return F.scaled_dot_product_attention(q_, k_, v_)
        return neighborhood_attention(q_, k_, v_, ks, st, dil, causal, rpb_, backend=backend)

    def infer():
        with torch.no_grad():
            return call(q, k, v, rpb)

    def train():
        for t in leaves:
            t.grad = None
        call(*leaves[:3], leaves[3] if has_rpb else None).backward(grad)

    res = {}
    for mode, fn in (('infer', infer), ('train', train)):
        try:
            fn()  # first call outside the peak: one-time costs (tile geometry caches, lazy loading)
            if memory and device == 'cuda':
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn()
                torch.cuda.synchronize()
                res[f'{mode}_peak_mib'] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            elif memory:
                res[f'{mode}_peak_mib'] = peak_alloc_mib(fn)
            res[f'{mode}_ms'] = time_ms(fn, device, max(warmup - 1, 0), repeat)
        except Exception as e:  # a backend that cannot run a case (natten backward on CPU, OOM) is reported
            res[f'{mode}_error'] = f'{type(e).__name__}: {str(e)[:300]}'
    return res


def _fmt(res, mode):
    return f'{res[mode + "_ms"]:9.2f} ms' if mode + '_ms' in res else f'{"error":>12s}'


def _cell(res, mode):
    if res is None or 'skipped' in res:
        return 'skipped'
    if f'{mode}_ms' not in res:
        return 'n/a'
    peak = res.get(f'{mode}_peak_mib')
    return f'{res[mode + "_ms"]:.1f} ms' + ('' if peak is None else f' / {peak:.1f} MiB')


def _speedup(row, other, mode):
    a, b = row.get(other) or {}, row.get('blocked') or {}
    if f'{mode}_ms' in a and f'{mode}_ms' in b:
        return f'{a[mode + "_ms"] / b[mode + "_ms"]:.2f}x'
    return 'n/a'


def _inverse_speedup(row, other, mode):
    a, b = row.get(other) or {}, row.get('blocked') or {}
    if f'{mode}_ms' in a and f'{mode}_ms' in b:
        return f'{b[mode + "_ms"] / a[mode + "_ms"]:.2f}x'
    return 'n/a'


def gna_markdown(results, backends):
    headers = ['shape', 'config', 'mode'] + backends
    has_ratio = 'blocked' in backends
    extra = [o for o in ('dense', 'natten') if has_ratio and o in backends]
    headers += [f'{o} / blocked' for o in extra]
    fused = has_ratio and 'cpu' in backends  # the fused C++ kernels: speedup over blocked
    headers += ['blocked / cpu'] if fused else []
    rows = []
    for r in results:
        ks = r['kernel_size']
        ks = 'x'.join(map(str, ks)) if isinstance(ks, (list, tuple)) else ks
        cfg = (f"B{r['batch']} {'x'.join(map(str, r['spatial']))} heads {r['heads']} dim {r['head_dim']} k{ks} "
               f"s{r['stride']} dil{r['dilation']}")
        cfg += (' causal' if r['is_causal'] else '') + (' rpb' if r['rpb'] else '')
        for mode in ('infer', 'train'):
            rows.append([r['shape'], cfg, 'fwd' if mode == 'infer' else 'fwd+bwd']
                        + [_cell(r.get(b), mode) for b in backends] + [_speedup(r, o, mode) for o in extra]
                        + ([_inverse_speedup(r, 'cpu', mode)] if fused else []))
    reasons = sorted({f"`{b}` {m}: {r[b][m + '_error']}" for r in results for b in backends for m in ('infer', 'train')
                      if isinstance(r.get(b), dict) and m + '_error' in r[b]})
    notes = ('Cells: median time / peak memory of one call. `dense`: F.scaled_dot_product_attention over all tokens '
             '(no mask). `x / blocked`: time of x over time of blocked (> 1: blocked is faster). n/a: the backend '
             'cannot run it (reasons below).\n\n')
    return notes + markdown_table(headers, rows) + ''.join(f'\n- {x}' for x in reasons) + ('\n' if reasons else '')


def add_gna_parser(sub):
    p = sub.add_parser('gna', help='generalized neighborhood attention backends side by side')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--backends', default='',
                   help='comma list of gna backends plus "dense" (default: reference,blocked,triton on cuda or cpu '
                        'on cpu,natten,dense)')
    p.add_argument('--shapes', default='', help=f'comma list of {list(GNA_SHAPES)} or "all" (default: '
                                                f'{",".join(DEFAULT_SHAPES)})')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeat', type=int, default=5)
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (0: torch default)')
    p.add_argument('--max-reference-tokens', type=int, default=3200,
                   help='skip the dense O(tokens^2) reference above this many tokens')
    p.add_argument('--max-natten-cpu-tokens', type=int, default=8192,
                   help='CPU: skip natten above this many tokens (its unfused Flex path materializes tokens^2 '
                        'scores and index tensors per batch and head)')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory calls')
    p.add_argument('--out', default='', help='JSON path (default: work_dirs/benchmark/gna_<device>_<time>.json); '
                                             'the Markdown table goes next to it (.md)')
    return p


def run_gna(args):
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backends.split(',') if args.backends else (
        ['reference', 'blocked'] + (['triton'] if args.device == 'cuda' else ['cpu']) + ['natten', 'dense'])
    shapes = list(GNA_SHAPES)[:-1] if args.shapes == 'all' else select_shapes(
        args.shapes or ','.join(DEFAULT_SHAPES), GNA_SHAPES)
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
            if bk == 'natten' and args.device == 'cpu' and tokens > args.max_natten_cpu_tokens:
                row[bk] = {'skipped': f'{tokens} tokens > --max-natten-cpu-tokens'}
                continue
            res = gna_measure(s, bk, args.device, dtype, args.warmup, args.repeat, memory=not args.no_memory)
            row[bk] = res
            print(f'{s:18s} {bk:9s} infer {_fmt(res, "infer")} | train {_fmt(res, "train")}', flush=True)
        results.append(row)
    memory = ('cuda max_memory_allocated above the inputs' if args.device == 'cuda' else
              'peak of live tensor bytes allocated during one call (torch.profiler memory timeline)')
    report = {'benchmark': 'gna', 'machine': machine_info(args.device), 'dtype': args.dtype, 'warmup': args.warmup,
              'repeat': args.repeat, 'memory': None if args.no_memory else memory,
              'dense': 'F.scaled_dot_product_attention over all tokens, heads-first inputs, no mask',
              'results': results}
    md = f'dtype {args.dtype}, {args.warmup} warmup, median of {args.repeat}; memory: {report["memory"]}.\n\n'
    write_report(report, 'gna', args.device, args.out, markdown=md + gna_markdown(results, backends))
    return report
