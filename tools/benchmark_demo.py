"""Cost of one training iteration of the `make demo` config and its variants, measured side by side in one run.

Builds, per variant (the demo config with ``--cfg-options``-style overrides), the segmentor, its optimizer wrapper and
its training dataloader as mmengine's runner does, then times ``model.train_step`` (data loading included) in
interleaved rounds: every round runs ``--chunk`` iterations of each variant in turn, so a load change on a shared
machine hits all of them alike. Reports the median time per iteration over the rounds and its ratio to the first
variant, as JSON and a markdown table::

    OMP_NUM_THREADS=1 taskset -c 1 python tools/benchmark.py demo --rounds 5 --chunk 10 --out benchmarks/demo_iter_cpu
"""
import json
import os
import os.path as osp
import statistics
import sys
import time
from typing import Dict

ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from tools.bench_utils import machine_info  # noqa: E402

CONFIG = osp.join(ROOT, 'configs', 'demo', 'upernet_nat_demo_shapes.py')
_AUX_HEAD_64 = dict(
    type='FCNHead', in_channels=128, in_index=2, channels=64, num_convs=1, concat_input=False, dropout_ratio=0.1,
    num_classes=4, norm_cfg=dict(type='BN', requires_grad=True), align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4, class_weight=[0.4, 1.2, 1.2, 1.2]))
# name -> overrides of the demo config; the first is the baseline of the ratios
VARIANTS: Dict[str, dict] = {
    # the demo before 2026-12-02 (2000 iterations, 7.3 min with 2 threads on the quiet machine): a four-stage NAT
    # (2-2-2-2, 32-256 wide), UperNet 64 wide and the auxiliary FCN head on the third stage
    'previous (4 stages, head 64 + aux)': {
        'model.backbone.depths': (2, 2, 2, 2), 'model.backbone.num_heads': (2, 4, 8, 16),
        'model.backbone.out_indices': (0, 1, 2, 3), 'model.decode_head.in_channels': [32, 64, 128, 256],
        'model.decode_head.in_index': [0, 1, 2, 3], 'model.decode_head.channels': 64,
        'model.auxiliary_head': dict(_AUX_HEAD_64, _delete_=True)},
    'demo (3 stages, head 32)': {},
}


def build(options: dict):
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmseg.registry import MODELS

    from visionattn.mm.runner import load_config

    data_root = osp.join(ROOT, 'demo_data', 'shapes')
    cfg = load_config(CONFIG, {'train_dataloader.dataset.data_root': data_root, **options})
    init_default_scope('mmseg')
    import visionattn.mm  # noqa: F401  (registers the backbone)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    params = sum(p.numel() for p in model.parameters())
    return model, optim, loader, params, cfg.train_dataloader.batch_size


def add_demo_parser(sub) -> None:
    parser = sub.add_parser('demo', help=__doc__.splitlines()[0], description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--chunk', type=int, default=10, help='iterations of each variant per round')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations of each variant first')
    parser.add_argument('--out', help='write OUT.json and OUT.md')
    parser.add_argument('--note', default='', help='a line for the markdown (how the run was pinned, what else ran)')


def run_demo(args) -> None:

    runs = {}
    for name, options in VARIANTS.items():
        model, optim, loader, params, batch = build(options)
        runs[name] = dict(model=model, optim=optim, it=iter(loader), params=params, batch=batch, times=[])

    def step(run):
        run['model'].train_step(next(run['it']), run['optim'])

    for run in runs.values():
        for _ in range(args.warmup):
            step(run)
    for _ in range(args.rounds):
        for run in runs.values():
            t0 = time.perf_counter()
            for _ in range(args.chunk):
                step(run)
            run['times'].append((time.perf_counter() - t0) / args.chunk)
    base = statistics.median(next(iter(runs.values()))['times'])
    rows = []
    for name, run in runs.items():
        ms = statistics.median(run['times']) * 1e3
        rows.append(dict(variant=name, overrides=VARIANTS[name], params=run['params'], batch=run['batch'],
                         ms_per_iter=ms, ms_per_iter_rounds=[t * 1e3 for t in run['times']],
                         ratio=ms / (base * 1e3)))
        print(f'{name:32s} {run["params"] / 1e6:6.3f} M params  batch {run["batch"]}  {ms:7.1f} ms/iter  '
              f'{ms / (base * 1e3):.3f}x')
    if args.out:
        info = machine_info('cpu')
        with open(args.out + '.json', 'w') as f:
            json.dump(dict(machine=info, rounds=args.rounds, chunk=args.chunk, warmup=args.warmup, rows=rows), f,
                      indent=1)
        lines = [
            '# demo training iteration cost (cpu)', '',
            f'Machine: {info["cpu"]} ({info["cpu_count"]} CPUs, torch threads {info["torch_threads"]}, load average '
            f'{"/".join(f"{x:.2f}" for x in info["loadavg_1_5_15"])}); torch {info["torch"]}; {info["date"]}.', '',
            f'`tools/benchmark.py demo`: `model.train_step` (data loading included) of each variant of '
            f'`configs/demo/upernet_nat_demo_shapes.py`, {args.warmup} warm-up iterations each, then {args.rounds} '
            f'interleaved rounds of {args.chunk} iterations per variant; median over the rounds.', '',
            '| variant | overrides | params | batch | ms / iteration | ratio |', '|---|---|---|---|---|---|']
        for r in rows:
            over = ', '.join(f'`{k}`' for k in r['overrides']) or '-'
            lines.append(f'| {r["variant"]} | {over} | {r["params"] / 1e6:.3f} M | {r["batch"]} | '
                         f'{r["ms_per_iter"]:.1f} | {r["ratio"]:.3f} |')
        if args.note:
            lines += ['', args.note]
        with open(args.out + '.md', 'w') as f:
            f.write('\n'.join(lines) + '\n')
        print(f'wrote {os.path.relpath(args.out)}.json and .md')
