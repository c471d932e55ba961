"""EViT benchmark: EViT-DeiT with token reorganization against the dense DeiT with the same weights.

Used by ``tools/benchmark.py evit``. Models, side by side in one run, inference (eval, no_grad):

- ``deit``: timm's ``deit_small_patch16_224`` (or ``--baseline``), the dense reference;
- ``evit_keep1``: our EViT with the keep rate set to 1 (same code path, no reorganization);
- ``evit``: our EViT at ``--keep-rate`` (blocks 3, 6, 9) with or without token fusion.

All share the same (random) weights. The models are timed in turn within each repeat, so a load change on the
machine hits all of them; times are medians of ``--repeat`` runs after ``--warmup`` runs. Measured 2026-11-23 on the
2-core AMD EPYC, 1 thread on an isolated core (every other process pinned to the other core), DeiT-S vs EViT-DeiT-S
keep 0.7 (benchmarks/evit_cpu_2026-11-23.json, evit_nofuse_cpu_2026-11-23.json): with fusion 1.37x at batch 1 and
1.58x at batch 32; without fusion 1.39x and 1.67x (targets: >= 1.3x at batch 32, not slower at batch 1).
"""
import statistics
import time

import torch

if __package__:
    from .bench_utils import machine_info, sync, write_report
else:  # imported from the tools folder (python tools/benchmark.py)
    from bench_utils import machine_info, sync, write_report


def add_evit_parser(sub):
    p = sub.add_parser('evit', help='EViT-DeiT keep rate < 1 against DeiT with the same weights')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--model', default='evit_deit_small_patch16_224')
    p.add_argument('--baseline', default='deit_small_patch16_224', help='timm dense model with the same keys')
    p.add_argument('--keep-rate', type=float, default=0.7)
    p.add_argument('--no-fuse', action='store_true', help='drop inattentive tokens without fusing them')
    p.add_argument('--batch-sizes', default='1,32')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeat', type=int, default=7)
    p.add_argument('--threads', type=int, default=1,
                   help='torch CPU threads (0: torch default; 1 is the least disturbed by other load)')
    p.add_argument('--out', default='', help='JSON path (default: work_dirs/benchmark/evit_<device>_<time>.json)')
    return p


def _build(args, dtype):
    import timm

    import visionattn  # noqa: F401
    from visionattn.models.evit import checkpoint_filter_fn

    torch.manual_seed(0)
    deit = timm.create_model(args.baseline, img_size=args.img_size).eval()
    evit = timm.create_model(
        args.model, img_size=args.img_size, keep_rate=args.keep_rate, fuse_token=not args.no_fuse).eval()
    evit.load_state_dict(checkpoint_filter_fn(deit.state_dict(), evit), strict=True)
    evit1 = timm.create_model(args.model, img_size=args.img_size, keep_rate=args.keep_rate).eval()
    evit1.load_state_dict(evit.state_dict())
    evit1.set_keep_rate(1.)
    return {name: m.to(args.device, dtype) for name, m in (('deit', deit), ('evit_keep1', evit1), ('evit', evit))}


def run_evit(args):
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = _build(args, dtype)
    with torch.no_grad():  # the token count after the last reorganization
        tokens = models['evit'].forward_features(
            torch.zeros(1, 3, args.img_size, args.img_size, device=args.device, dtype=dtype)).shape[1]
    results = []
    for bs in [int(b) for b in args.batch_sizes.split(',')]:
        x = torch.randn(bs, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
        x = x.to(args.device, dtype)
        times = {name: [] for name in models}
        with torch.no_grad():
            for _ in range(args.warmup):
                for m in models.values():
                    m(x)
            sync(args.device)
            for _ in range(args.repeat):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    m(x)
                    sync(args.device)
                    times[name].append(time.perf_counter() - t0)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        row = {
            'batch': bs,
            'ms': ms,
            'images_per_s': {name: bs / v * 1e3 for name, v in ms.items()},
            'speedup_evit_vs_deit': ms['deit'] / ms['evit'],
            'speedup_evit_vs_evit_keep1': ms['evit_keep1'] / ms['evit'],
            'all_ms': {name: [v * 1e3 for v in t] for name, t in times.items()},
        }
        print(f'batch {bs:3d}: deit {ms["deit"]:9.2f} ms | evit keep 1 {ms["evit_keep1"]:9.2f} ms | '
              f'evit keep {args.keep_rate} {ms["evit"]:9.2f} ms | speedup vs deit {row["speedup_evit_vs_deit"]:.2f}x',
              flush=True)
        results.append(row)
    report = {
        'benchmark': 'evit', 'machine': machine_info(args.device), 'dtype': args.dtype, 'model': args.model,
        'baseline': args.baseline, 'keep_rate': args.keep_rate, 'fuse_token': not args.no_fuse,
        'img_size': args.img_size, 'final_tokens': tokens, 'warmup': args.warmup, 'repeat': args.repeat,
        'results': results}
    write_report(report, 'evit', args.device, args.out)
    return report
