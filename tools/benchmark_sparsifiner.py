"""Sparsifiner benchmark: the top-k sparse attention against the dense DeiT attention with the same weights.

Used by ``tools/benchmark.py sparsifiner``. Side by side in one run (every timed function once per repeat, in turn, so
a load change on the machine hits all of them; medians of ``--repeat`` runs after ``--warmup``), inference (no_grad),
for each attention keep rate (density) and batch size:

- ``attn``: the attention op alone on DeiT-S shapes (N = 197, 6 heads, 64 channels; q, k, v strided views of one
  packed qkv tensor, as in the model; each query row after the class token keeps ``ceil(rate * N)`` keys, the class
  token row is dense): ``dense`` is ``F.scaled_dot_product_attention`` without a mask (DeiT); the
  ``visionattn.ops.topk_attention`` backends ``cpu`` (C kernel) and ``sparse`` (CSR SDDMM + ``embedding_bag``) compute
  only the kept pairs, ``masked_sdpa`` is dense SDPA with the mask (what a masked implementation costs);
- ``module``: one whole attention layer (qkv projection, Sparsifiner's connectivity predictor with its top-k, the
  attention, the output projection) against timm's DeiT-S attention layer with the same weights;
- ``model``: ``sparsifiner_deit_small_patch16_224`` (each backend of ``--backends``) against timm's
  ``deit_small_patch16_224`` with the same weights.

Ratios are Sparsifiner time / dense time (< 1: faster than dense), of the medians and of the minima (on a loaded
machine the minima are the least disturbed runs).

Measured 2026-11-23 on the 2-core AMD EPYC (AVX2), 1 thread on an isolated core, float32
(benchmarks/sparsifiner_evit_cpu_2026-11-23.md; median ratios):

=========  =====  ==========  =================  ==================  ===========  ===========
keep rate  batch  attn cpu    attn ``sparse``    attn masked_sdpa    layer cpu    model cpu
=========  =====  ==========  =================  ==================  ===========  ===========
0.25       1      0.69x       1.39x              1.44x               1.59x        1.23x
0.25       32     0.74x       2.26x              1.52x               1.60x        1.20x
0.5        1      1.28x       2.71x              2.00x               2.02x        1.30x
0.5        32     1.19x       3.46x              1.85x               1.79x        1.31x
=========  =====  ==========  =================  ==================  ===========  ===========

The C kernel (``cpu``) meets the target (attention below dense at 0.25). The layer and the model stay slower than
DeiT-S: the connectivity predictor (projections, ``coef @ basis``, two top-k selections per row) costs more than the
attention saves at N = 197.
"""
import math
import statistics
import time

import torch
import torch.nn.functional as F

if __package__:
    from .bench_utils import machine_info, sync, write_report
else:  # imported from the tools folder (python tools/benchmark.py)
    from bench_utils import machine_info, sync, write_report


def add_sparsifiner_parser(sub):
    p = sub.add_parser('sparsifiner', help='Sparsifiner top-k sparse attention against dense DeiT-S attention')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--keep-rates', default='0.25,0.5', help='attention densities (keys kept per query / N)')
    p.add_argument('--batch-sizes', default='1,32')
    p.add_argument('--parts', default='attn,module,model', help='comma list of attn, module, model')
    p.add_argument('--backends', default='cpu,sparse,masked_sdpa', help='topk_attention backends to time')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeat', type=int, default=7)
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (0: torch default)')
    p.add_argument('--out', default='',
                   help='JSON path (default: work_dirs/benchmark/sparsifiner_<device>_<time>.json)')
    return p


def _round_robin(fns, device, warmup, repeat):
    with torch.no_grad():
        for _ in range(warmup):
            for f in fns.values():
                f()
        sync(device)
        times = {name: [] for name in fns}
        for _ in range(repeat):
            for name, f in fns.items():
                t0 = time.perf_counter()
                f()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}, \
        {name: [v * 1e3 for v in t] for name, t in times.items()}


def _ratios(all_ms, backends):
    """Sparsifiner / dense per backend, from the medians and from the minima (the least disturbed runs)."""
    med = {b: statistics.median(all_ms[b]) / statistics.median(all_ms['dense']) for b in backends}
    low = {b: min(all_ms[b]) / min(all_ms['dense']) for b in backends}
    return med, low


def _models(rate, device, backends):
    import timm

    import visionattn  # noqa: F401
    from visionattn.models.sparsifiner import checkpoint_filter_fn

    torch.manual_seed(0)
    deit = timm.create_model('deit_small_patch16_224').eval()
    out = {'dense': deit}
    for backend in backends:
        sp = timm.create_model('sparsifiner_deit_small_patch16_224', attn_keep_rate=rate, attn_backend=backend).eval()
        sp.load_state_dict(checkpoint_filter_fn(deit.state_dict(), sp), strict=True)
        out[backend] = sp
    return {name: m.to(device) for name, m in out.items()}


def _time_attn(bs, K, backends, dev, args, H=6, N=197, D=64):
    from visionattn.ops.topk import topk_attention

    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(bs, N, 3, H, D, generator=g).to(dev)
    q, k, v = qkv.unbind(2)  # [B, N, H, D] views
    qh, kh, vh = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, D] views, as DeiT's attention
    idx = torch.randn(bs, H, N - 1, N, generator=g).to(dev).topk(K, dim=-1, sorted=False)[1]
    fns = {'dense': lambda: F.scaled_dot_product_attention(qh, kh, vh)}
    for b in backends:
        fns[b] = lambda b=b: topk_attention(q, k, v, idx, D ** -0.5, num_dense=1, backend=b)
    return _round_robin(fns, dev, args.warmup, args.repeat)


def _time_module(models, x, backends, dev, args):
    deit = models['dense']
    tokens = deit.norm_pre(deit._pos_embed(deit.patch_embed(x)))
    grid = deit.patch_embed.grid_size
    fns = {'dense': lambda: deit.blocks[0].attn(tokens)}
    for b in backends:
        fns[b] = lambda b=b: models[b].blocks[0].attn(tokens, None, grid)
    return _round_robin(fns, dev, args.warmup, args.repeat)


def _time_model(models, x, dev, args):
    fns = {name: (lambda m=m: m(x)) for name, m in models.items()}
    repeat = max(3, args.repeat // 2) if x.shape[0] > 8 else args.repeat
    return _round_robin(fns, dev, args.warmup, repeat)


def run_sparsifiner(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    parts = args.parts.split(',')
    backends = args.backends.split(',')
    N = 197
    rows = []
    for rate in [float(r) for r in args.keep_rates.split(',')]:
        K = math.ceil(rate * N)
        models = _models(rate, dev, backends) if {'module', 'model'} & set(parts) else {}
        for bs in [int(b) for b in args.batch_sizes.split(',')]:
            row = {'keep_rate': rate, 'keys_per_query': K, 'batch': bs}
            x = torch.randn(bs, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(dev)
            for part in parts:
                if part == 'attn':
                    ms, all_ms = _time_attn(bs, K, backends, dev, args)
                elif part == 'module':
                    ms, all_ms = _time_module(models, x, backends, dev, args)
                elif part == 'model':
                    ms, all_ms = _time_model(models, x, dev, args)
                else:
                    raise ValueError(f'unknown part {part!r}')
                row[f'{part}_ms'] = ms
                row[f'{part}_min_ms'] = {name: min(t) for name, t in all_ms.items()}
                row[f'{part}_ratio'], row[f'{part}_ratio_min'] = _ratios(all_ms, backends)
                row[f'{part}_all_ms'] = all_ms
            print(f'keep {rate} (K={K}) batch {bs:3d}: ' + ' | '.join(
                f'{part} ' + ', '.join(
                    f'{b} {row[f"{part}_ratio"][b]:.2f}x (min {row[f"{part}_ratio_min"][b]:.2f}x)' for b in backends)
                + f' [dense {row[f"{part}_ms"]["dense"]:.2f} ms]' for part in parts), flush=True)
            rows.append(row)
    report = {
        'benchmark': 'sparsifiner', 'machine': machine_info(dev), 'dtype': 'float32', 'shape': dict(N=N, H=6, D=64),
        'backends': backends, 'warmup': args.warmup, 'repeat': args.repeat, 'results': rows}
    write_report(report, 'sparsifiner', dev, args.out)
    return report
