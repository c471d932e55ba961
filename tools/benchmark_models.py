"""Model benchmark: throughput and latency (forward, and forward+backward train step) and peak memory of any set of
models, input sizes, batch sizes, dtypes and backends, on CPU or GPU. Used by ``tools/benchmark.py models``.

Every configuration is timed in turn within each repeat (a load change on a shared machine hits all of them alike);
numbers are medians of ``--repeat`` runs after ``--warmup`` runs, with the spread (min-max) kept. Backends:
``eager`` (the default ops, best available backend), ``reference`` (every visionattn op on its oracle backend,
``visionattn.ops.force_backend``), ``compile`` (``torch.compile`` of the eager model). Peak memory is the CUDA
allocator peak on GPU and the growth of the process's peak RSS on CPU (coarse: it only grows). Writes the JSON
report, a Markdown table, and a PNG (latency vs input size per model; accuracy vs throughput from model_zoo's paper
figures).

    python tools/benchmark.py models --models nat_tiny,va_convit_small --sizes 224,512 --batch-sizes 1,8
    python tools/benchmark.py models --models nat_tiny --sizes 512,800x1333 --mode train --device cuda
"""
import contextlib
import gc
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from bench_utils import machine_info, maxrss_mib, sync, write_report


def add_models_parser(sub):
    p = sub.add_parser('models', help='throughput/latency/memory of whole models')
    p.add_argument('--models', required=True, help='comma list of registered model names')
    p.add_argument('--sizes', default='224', help='comma list of input sizes: 224 or HxW (e.g. 800x1333)')
    p.add_argument('--batch-sizes', default='8')
    p.add_argument('--dtypes', default='float32', help='comma list: float32, float16, bfloat16 (autocast)')
    p.add_argument('--backends', default='eager', help='comma list: eager, reference, compile')
    p.add_argument('--mode', default='infer', choices=['infer', 'train', 'both'])
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--features', action='store_true',
                   help='time forward_intermediates (the dense-prediction backbone path) instead of the classifier')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    p.add_argument('--out', default='', help='JSON path (default: work_dirs/benchmark/models_<device>_<time>.json)')
    p.add_argument('--no-plot', action='store_true')
    return p


def _size(s: str) -> Tuple[int, int]:
    h, _, w = s.partition('x')
    return int(h), int(w or h)


def _backend(name: str):
    from visionattn.ops import force_backend
    return force_backend('reference') if name == 'reference' else contextlib.nullcontext()


def _step_fn(model, x, mode: str, dtype: torch.dtype, device: str, features: bool):
    amp = dtype != torch.float32
    autocast = (lambda: torch.autocast(device, dtype=dtype)) if amp else contextlib.nullcontext

    def out_of(m):
        y = m.forward_intermediates(x, intermediates_only=True) if features else m(x)
        return sum(t.float().mean() for t in y) if isinstance(y, (list, tuple)) else y.float().mean()

    if mode == 'infer':
        def fn():
            with torch.no_grad(), autocast():
                out_of(model)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)

        def fn():
            with autocast():
                loss = out_of(model)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return fn


def run_models(args) -> dict:
    import timm

    import visionattn  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    modes = ['infer', 'train'] if args.mode == 'both' else [args.mode]
    configs = []
    for name in args.models.split(','):
        for size in args.sizes.split(','):
            for bs in map(int, args.batch_sizes.split(',')):
                for dt in args.dtypes.split(','):
                    for backend in args.backends.split(','):
                        for mode in modes:
                            configs.append(dict(model=name, size=list(_size(size)), batch=bs, dtype=dt,
                                                backend=backend, mode=mode, device=device))
    # build each model once per (model, backend, mode); time all configurations in turn per repeat
    runners, results = {}, []
    for c in configs:
        torch.manual_seed(0)
        model = timm.create_model(c['model']).to(device)
        model.train(c['mode'] == 'train')
        if c['backend'] == 'compile':
            model = torch.compile(model)
        x = torch.randn(c['batch'], 3, *c['size'], device=device)
        rss0 = maxrss_mib()
        if device == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        fn = _step_fn(model, x, c['mode'], getattr(torch, c['dtype']), device, args.features)
        try:
            with _backend(c['backend']):
                for _ in range(args.warmup):
                    fn()
                sync(device)
            err = None
        except (RuntimeError, ValueError) as e:  # e.g. out of memory, a size the model rejects
            err = f'{type(e).__name__}: {str(e)[:200]}'
        peak = (torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda' else maxrss_mib() - rss0)
        runners[len(results)] = fn
        results.append(dict(c, error=err, times=[], peak_mem_mib=round(peak, 1)))
        gc.collect()
    for _ in range(args.repeat):
        for i, r in enumerate(results):
            if r['error']:
                continue
            with _backend(r['backend']):
                t0 = time.perf_counter()
                runners[i]()
                sync(device)
                r['times'].append(time.perf_counter() - t0)
    for r in results:
        if r['times']:
            med = statistics.median(r['times'])
            r.update(latency_ms=round(med * 1e3, 2), spread_ms=[round(min(r['times']) * 1e3, 2),
                                                                round(max(r['times']) * 1e3, 2)],
                     throughput=round(r['batch'] / med, 2))
    report = dict(machine=machine_info(device), args=vars(args) | {'func': None}, results=results)
    path = write_report(report, 'models', device, args.out)
    table = markdown_table(results)
    path.with_suffix('.md').write_text(table)
    print(table)
    if not args.no_plot:
        plot(results, path.with_suffix('.png'))
    return report


def markdown_table(results: List[dict]) -> str:
    lines = ['| model | input | batch | dtype | backend | mode | latency ms (min-max) | img/s | peak MiB |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in results:
        size = 'x'.join(map(str, r['size']))
        if r['error']:
            lines.append(f"| `{r['model']}` | {size} | {r['batch']} | {r['dtype']} | {r['backend']} | {r['mode']} | "
                         f"{r['error']} | | |")
            continue
        lo, hi = r['spread_ms']
        lines.append(f"| `{r['model']}` | {size} | {r['batch']} | {r['dtype']} | {r['backend']} | {r['mode']} | "
                     f"{r['latency_ms']:.1f} ({lo:.1f}-{hi:.1f}) | {r['throughput']:.1f} | {r['peak_mem_mib']:.0f} |")
    return '\n'.join(lines) + '\n'


def plot(results: List[dict], path: Path) -> None:
    """Latency vs input size per model, and paper top-1 vs measured throughput (model_zoo's paper figures)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib not installed: no plot')
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: Dict[tuple, list] = {}
    for r in results:
        if not r['error']:
            key = (r['model'], r['batch'], r['dtype'], r['backend'], r['mode'])
            series.setdefault(key, []).append((r['size'][0] * r['size'][1], r['latency_ms']))
    for key, pts in series.items():
        pts.sort()
        label = ' '.join(map(str, key[:1] + key[3:]))
        ax1.plot([p[0] ** 0.5 for p in pts], [p[1] for p in pts], marker='o', label=label)
    ax1.set_xlabel('input size (sqrt of H*W, pixels)')
    ax1.set_ylabel('latency (ms)')
    ax1.set_yscale('log')
    ax1.set_title('latency vs input size')
    ax1.legend(fontsize=7)
    papers_path = Path(__file__).with_name('model_zoo_papers.json')
    papers = json.loads(papers_path.read_text()) if papers_path.exists() else {}
    import timm
    for r in results:
        top1 = papers.get(r['model'], {}).get('top1')
        # the paper's accuracy belongs to the model's own input size
        native = list(timm.models.get_pretrained_cfg(r['model']).input_size[1:]) == r['size']
        if not r['error'] and top1 is not None and r['mode'] == 'infer' and native:
            ax2.scatter(r['throughput'], top1)
            ax2.annotate(f"{r['model']} {'x'.join(map(str, r['size']))}", (r['throughput'], top1), fontsize=7)
    ax2.set_xlabel('measured throughput (img/s)')
    ax2.set_ylabel('paper ImageNet top-1 (%)')
    ax2.set_title('accuracy vs throughput')
    info = machine_info(results[0]['device'] if results else 'cpu') if results else {}
    fig.suptitle(f"visionattn models on {info.get('gpu') or info.get('cpu')}, torch {info.get('torch')}, "
                 f"{info.get('date', '')[:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f'wrote {path}')
