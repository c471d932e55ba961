"""Model benchmark: throughput and latency (forward, and forward+backward train step) and peak memory of any set of
models, input sizes, batch sizes, dtypes and backends, on CPU or GPU. Used by ``tools/benchmark.py models``.

Every configuration is timed in turn within each repeat (a load change on a shared machine hits all of them alike);
numbers are medians of ``--repeat`` runs after ``--warmup`` runs, with the spread (min-max) kept. Backends:
``eager`` (the default ops, best available backend), ``reference`` (every visionattn op on its oracle backend,
``visionattn.ops.force_backend``), ``compile`` (``torch.compile`` of the eager model), ``nocpu`` (eager without the
fused C++ CPU kernels, backend ``cpu``). Peak memory is the CUDA
allocator peak on GPU and, on CPU, the peak of live tensor bytes during one call after the warmup (torch.profiler's
memory timeline, ``bench_utils.peak_alloc_mib``; the process's peak RSS only grows, so in one process it credited the
first large configuration with the growth of all: BiFormer-S 512 ``eager`` 426 MiB vs ``nocpu`` 104). Writes the JSON
report, a Markdown table, and a PNG (latency vs input size per model; accuracy vs throughput from model_zoo's paper
figures).

    python tools/benchmark.py models --models nat_tiny,va_convit_small --sizes 224,512 --batch-sizes 1,8
    python tools/benchmark.py models --models nat_tiny --sizes 512,800x1333 --mode train --device cuda

Strided GNA (``--strides``): models with neighborhood-attention layers (NAT, DiNAT, ...) are built with
``stride=s`` for each listed stride; ``sim`` lists stride 1 and every uniform stride that the GNA simulator
(``visionattn.ops.gna_sim``) finds perfectly block-sparse in every layer for the blocked CPU backend's query tiles
(dynamic key tiles: each query tile reads the union of its queries' windows, so the simulator runs with
``kv_tile=1``); ``all`` lists every stride from 1 to the kernel size. Each row carries the simulator's per-layer
counts and predicted attention speedup over stride 1, the blocked backend's own plan (unmasked or not, pairs it
computes), and the measured speedups (time in the attention op of the NA layers, and the whole forward):

    python tools/benchmark.py models --models nat_tiny --sizes 224,512 --batch-sizes 8 --strides sim --threads 1
"""
import contextlib
import gc
import json
import math
import statistics
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

if __package__:
    from .bench_utils import machine_info, peak_alloc_mib, sync, write_report
else:  # imported from the tools folder (python tools/benchmark.py)
    from bench_utils import machine_info, peak_alloc_mib, sync, write_report


def add_models_parser(sub):
    p = sub.add_parser('models', help='throughput/latency/memory of whole models')
    p.add_argument('--models', required=True, help='comma list of registered model names')
    p.add_argument('--sizes', default='224', help='comma list of input sizes: 224 or HxW (e.g. 800x1333)')
    p.add_argument('--batch-sizes', default='8')
    p.add_argument('--dtypes', default='float32', help='comma list: float32, float16, bfloat16 (autocast)')
    p.add_argument('--backends', default='eager',
                   help='comma list: eager, reference, compile, nocpu (eager without the fused C++ CPU kernels)')
    p.add_argument('--mode', default='infer', choices=['infer', 'train', 'both'])
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--strides', default='',
                   help="comma list of GNA strides for models with neighborhood attention (e.g. 1,4,7); 'sim': "
                        'stride 1 and the strides the simulator finds perfectly block-sparse for the blocked backend; '
                        "'all': 1 to kernel_size")
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


@contextlib.contextmanager
def _no_cpu_kernels():
    """The default ops with the fused C++ CPU kernels (backend ``cpu``) switched off: ``auto`` picks as without them."""
    from visionattn.ops.cpu import _ext
    _ext.load()
    saved = dict(_ext._STATE)
    _ext._STATE.clear()
    _ext._STATE['error'] = 'switched off by the benchmark (backend nocpu)'
    try:
        yield
    finally:
        _ext._STATE.clear()
        _ext._STATE.update(saved)


def _backend(name: str):
    from visionattn.ops import force_backend
    if name == 'nocpu':
        return _no_cpu_kernels()
    return force_backend('reference') if name == 'reference' else contextlib.nullcontext()


def _na_layers(model, size: Tuple[int, int]) -> List[dict]:
    """Every neighborhood-attention layer's input map and settings, from one batch-1 forward at ``size``."""
    from visionattn.layers import NeighborhoodAttention1d, NeighborhoodAttention2d, NeighborhoodAttention3d

    found, handles = [], []
    for name, m in model.named_modules():
        if isinstance(m, (NeighborhoodAttention1d, NeighborhoodAttention2d, NeighborhoodAttention3d)):
            def hook(mod, args, name=name):
                found.append(dict(layer=name, map=list(args[0].shape[1:-1]), kernel_size=list(mod.kernel_size),
                                  dilation=list(mod.dilation), small_input=mod.small_input,
                                  heads=mod.num_heads, head_dim=mod.head_dim))
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *size))
    finally:
        for h in handles:
            h.remove()
    return found


def blocked_tiling(shape: Sequence[int], kernel_size: Sequence[int], stride: int) -> Tuple[List[int], bool, int]:
    """The blocked CPU backend's own plan for one dilation group of a layer: its query tile, whether it runs without a
    mask (every tile dense), and the (query, key) pairs it computes (halo and padding included)."""
    from visionattn.ops.blocked.neighborhood import blocked_tiling as plan

    tile, unmasked, pairs = plan(shape, kernel_size, (stride,) * len(shape))
    return list(tile), unmasked, pairs


def simulate_na_layers(layers: List[dict], stride: int) -> dict:
    """The GNA simulator on every NA layer at a uniform ``stride``, with the blocked CPU backend's query tiles.

    Per layer: the map the op sees (after the layer's small-map padding/clamping), the backend's query tile (of one
    dilation group), the simulator's verdict (``perfectly_block_sparse``: every query tile reads exactly its
    queries' common window, so no masked pair; the simulator runs with ``kv_tile=1``, i.e. dynamic key tiles: a tile
    kernel reading the union of its queries' windows), key tiles (= keys) per query tile and the pairs such a kernel
    computes vs the attended ones; next to it the blocked backend's own plan (``backend_unmasked``,
    ``backend_pairs``: its key spans are uniform over the tiles, so border clamping can leave it a mask where the
    simulator sees none). Summed over layers (times heads x head_dim x 2): attention MACs computed and useful.
    """
    from visionattn.ops.gna_sim import simulate_gna

    rows, computed, useful, backend = [], 0, 0, 0
    for ly in layers:
        ks, ds = ly['kernel_size'], list(ly['dilation'])
        if ly['small_input'] == 'clamp':
            ds = [max(1, min(d, s // k)) for d, k, s in zip(ds, ks, ly['map'])]
        shape = [max(s, k * d) for s, k, d in zip(ly['map'], ks, ds)]
        if any(stride > k for k in ks):
            return dict(error=f'stride {stride} > kernel_size {ks}')
        group = [math.ceil(s / d) for s, d in zip(shape, ds)]  # the backend folds dilation groups into the batch
        q_tile, unmasked, pairs_group = blocked_tiling(group, ks, stride)
        sim = simulate_gna(shape, ks, stride, ds, False, q_tile, 1)
        pairs = sim.visited_tile_pairs * math.prod(q_tile)
        backend_pairs = pairs_group * math.prod(ds)
        rows.append(dict(layer=ly['layer'], map=shape, dilation=ds, q_tile=q_tile,
                         perfectly_block_sparse=sim.perfectly_block_sparse,
                         keys_per_q_tile=round(sim.kv_tiles_per_q_tile, 2), computed_pairs=pairs,
                         attended_pairs=sim.attended_pairs, backend_unmasked=unmasked, backend_pairs=backend_pairs))
        scale = 2 * ly['heads'] * ly['head_dim']
        computed += scale * pairs
        useful += scale * sim.attended_pairs
        backend += scale * backend_pairs
    return dict(perfectly_block_sparse=all(r['perfectly_block_sparse'] for r in rows),
                backend_unmasked=all(r['backend_unmasked'] for r in rows), attn_macs_computed=computed,
                attn_macs_useful=useful, attn_macs_backend=backend, layers=rows)


def _stride_plan(name: str, size: Tuple[int, int], strides: str) -> Dict[int, dict]:
    """``{stride: simulator report}`` for one model and size (``strides``: comma list of ints, 'sim' or 'all')."""
    import timm

    layers = _na_layers(timm.create_model(name), size)
    if not layers:
        raise ValueError(f'{name} has no neighborhood-attention layers for --strides')
    if strides in ('sim', 'all'):
        kmax = min(min(ly['kernel_size']) for ly in layers)
        sims = {s: simulate_na_layers(layers, s) for s in range(1, kmax + 1)}
        if strides == 'all':
            return sims
        plan = {s: r for s, r in sims.items() if s == 1 or r['perfectly_block_sparse']}
        if len(plan) == 1:
            print(f'{name} at {size}: no uniform stride is perfectly block-sparse in every layer for the blocked '
                  "tiles (see --strides all)")
        return plan
    return {s: simulate_na_layers(layers, s) for s in sorted({1, *map(int, strides.split(','))})}  # 1: the baseline


class _OpTimer:
    """Adds the wall time of every ``neighborhood_attention`` call made by the NA layers to ``total`` (seconds)."""

    def __init__(self, device: str):
        self.device, self.total = device, 0.

    def __enter__(self):
        import visionattn.layers.neighborhood as layer_mod

        self._mod, self._orig = layer_mod, layer_mod.neighborhood_attention

        def timed(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            out = self._orig(*args, **kwargs)
            sync(self.device)
            self.total += time.perf_counter() - t0
            return out

        layer_mod.neighborhood_attention = timed
        return self

    def __exit__(self, *exc):
        self._mod.neighborhood_attention = self._orig


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
            plan = _stride_plan(name, _size(size), args.strides) if args.strides else {None: None}
            for stride, sim in plan.items():
                for bs in map(int, args.batch_sizes.split(',')):
                    for dt in args.dtypes.split(','):
                        for backend in args.backends.split(','):
                            for mode in modes:
                                c = dict(model=name, size=list(_size(size)), batch=bs, dtype=dt, backend=backend,
                                         mode=mode, device=device)
                                if stride is not None:
                                    c.update(stride=stride, sim=sim)
                                configs.append(c)
    # build each model once per (model, backend, mode); time all configurations in turn per repeat
    runners, results = {}, []
    for c in configs:
        torch.manual_seed(0)
        kwargs = {} if c.get('stride') is None else dict(stride=c['stride'])
        model = timm.create_model(c['model'], **kwargs).to(device)
        model.train(c['mode'] == 'train')
        if c['backend'] == 'compile':
            model = torch.compile(model)
        x = torch.randn(c['batch'], 3, *c['size'], device=device)
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
        peak = 0.
        if device == 'cuda':
            peak = torch.cuda.max_memory_allocated() / 2**20
        elif err is None:
            with _backend(c['backend']):
                peak = peak_alloc_mib(fn)
        runners[len(results)] = fn
        results.append(dict(c, error=err, times=[], peak_mem_mib=round(peak, 1)))
        gc.collect()
    for _ in range(args.repeat):
        for i, r in enumerate(results):
            if r['error']:
                continue
            timer = _OpTimer(device) if 'stride' in r and r['backend'] != 'compile' else contextlib.nullcontext()
            with _backend(r['backend']), timer:
                t0 = time.perf_counter()
                runners[i]()
                sync(device)
                r['times'].append(time.perf_counter() - t0)
            if isinstance(timer, _OpTimer):
                r.setdefault('attn_op_times', []).append(timer.total)
    for r in results:
        if r['times']:
            med = statistics.median(r['times'])
            r.update(latency_ms=round(med * 1e3, 2), spread_ms=[round(min(r['times']) * 1e3, 2),
                                                                round(max(r['times']) * 1e3, 2)],
                     throughput=round(r['batch'] / med, 2))
        if r.get('attn_op_times'):
            r['attn_op_ms'] = round(statistics.median(r['attn_op_times']) * 1e3, 2)
    if args.strides:
        _stride_speedups(results)
    report = dict(machine=machine_info(device), args=vars(args) | {'func': None}, results=results)
    table = markdown_table(results)
    path = write_report(report, 'models', device, args.out, markdown=table)
    print(table)
    if not args.no_plot:
        plot(results, path.with_suffix('.png'))
    return report


def _stride_speedups(results: List[dict]) -> None:
    """Measured and simulated (attention MACs computed) speedups of each stride over stride 1 of the same config."""
    def key(r):
        return (r['model'], tuple(r['size']), r['batch'], r['dtype'], r['backend'], r['mode'])
    base = {key(r): r for r in results if r.get('stride') == 1}
    for r in results:
        b = base.get(key(r))
        if b is None or r['error'] or b['error'] or 'error' in r['sim']:
            continue
        r['measured_speedup'] = round(b['latency_ms'] / r['latency_ms'], 3)
        r['sim_attn_speedup'] = round(b['sim']['attn_macs_computed'] / r['sim']['attn_macs_computed'], 3)
        r['backend_attn_speedup'] = round(b['sim']['attn_macs_backend'] / r['sim']['attn_macs_backend'], 3)
        if r.get('attn_op_ms') and b.get('attn_op_ms'):
            r['measured_attn_op_speedup'] = round(b['attn_op_ms'] / r['attn_op_ms'], 3)


def markdown_table(results: List[dict]) -> str:
    if any('stride' in r for r in results):
        return stride_table(results)
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


def stride_table(results: List[dict]) -> str:
    lines = ['| model | input | batch | dtype | mode | stride | perfectly block-sparse (sim) | attn GMACs computed / '
             'useful (sim) | sim attn speedup | blocked backend: unmasked, attn GMACs (speedup) | attention op ms | '
             'measured op speedup | latency ms (min-max) | img/s | measured speedup |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in results:
        size = 'x'.join(map(str, r['size']))
        sim = r['sim']
        head = f"| `{r['model']}` | {size} | {r['batch']} | {r['dtype']} | {r['mode']} | {r['stride']} | "
        if 'error' in sim:
            lines.append(head + f"{sim['error']} | | | | | | | | |")
            continue
        head += (f"{'yes' if sim['perfectly_block_sparse'] else 'no'} | {sim['attn_macs_computed'] / 1e9:.3f} / "
                 f"{sim['attn_macs_useful'] / 1e9:.3f} | {r.get('sim_attn_speedup', '')} | "
                 f"{'yes' if sim['backend_unmasked'] else 'no'}, {sim['attn_macs_backend'] / 1e9:.3f} "
                 f"({r.get('backend_attn_speedup', '')}) | ")
        if r['error']:
            lines.append(head + f"| | {r['error']} | | |")
            continue
        lo, hi = r['spread_ms']
        lines.append(head + f"{r.get('attn_op_ms', '')} | {r.get('measured_attn_op_speedup', '')} | "
                            f"{r['latency_ms']:.1f} ({lo:.1f}-{hi:.1f}) | {r['throughput']:.1f} | "
                            f"{r.get('measured_speedup', '')} |")
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
            key = (r['model'], r['batch'], r['dtype'], r['backend'], r['mode']) + (
                (f"stride {r['stride']}",) if 'stride' in r else ())
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
